"""ApiTestCase: a live gateway with terminals A and B dialled in, and its HTTP API one call away.

Requests are made with urllib on a thread (``deferToThread``) while the reactor serves them, as
any script would make them.
"""

import json
from urllib import error as urlerror
from urllib import request as urlrequest

from twisted.internet import defer, threads

from gateway.sync.monitor import SAVED_FROM_DEVICE
from live_site import LiveTestCase, Site, wait_until
from simulator.people import People

TOKEN = "test-token"
A, B = 101, 102


def http(method: str, url: str, body=None, token=None, raw: bytes | None = None, headers=()):
    """One request (blocking: run it on a thread); returns status, JSON (or text) and headers."""
    data = raw if raw is not None else json.dumps(body).encode() if body is not None else None
    req = urlrequest.Request(url, data=data, method=method)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    for name, value in headers:
        req.add_header(name, value)
    try:
        with urlrequest.urlopen(req, timeout=10) as response:
            status, payload, found = response.status, response.read(), response.headers
    except urlerror.HTTPError as exc:
        status, payload, found = exc.code, exc.read(), exc.headers
    is_json = found.get("Content-Type", "").startswith("application/json")
    return status, json.loads(payload) if is_json else payload.decode(), found


class ApiTestCase(LiveTestCase):
    """A gateway with terminals A and B dialled in, and its API one call away."""

    config = {"api_token": TOKEN}
    @defer.inlineCallbacks
    def setUp(self):
        self.site = Site(self.db_url, terminal_ids=(A, B), **self.config).start()
        self.addCleanup(self.site.stop)
        self.people = People(seed=3)
        self.url = f"http://127.0.0.1:{self.site.gateway.http_port.getHost().port}"
        yield wait_until(lambda: self.site.online(A, B), "terminals A and B online")

    def call(self, method, path, body=None, token=TOKEN, **options):
        return threads.deferToThread(http, method, self.url + path, body, token, **options)

    @defer.inlineCallbacks
    def get(self, path, status=200):
        code, body, _ = yield self.call("GET", path, token=None)
        self.assertEqual(code, status, body)
        return body

    @defer.inlineCallbacks
    def assert_error(self, method, path, status, mentions, **options):
        """The request fails with ``status`` and a JSON error that says what was wrong."""
        code, body, _ = yield self.call(method, path, **options)
        self.assertEqual(code, status, body)
        self.assertEqual(set(body), {"error", "status"})
        self.assertEqual(body["status"], status)
        self.assertIn(mentions, body["error"])
        self.assertNotIn("Traceback", body["error"])
        return body

    @defer.inlineCallbacks
    def enroll(self, terminal_id, user_id):
        """A person enrolled at a terminal, once the server saved them."""
        person = self.people.person(user_id)
        self.site.terminals[terminal_id].enroll(person)
        yield wait_until(lambda: self.site.count_events(type=SAVED_FROM_DEVICE, user_id=user_id) == 1, f"{user_id} saved")
        return person


