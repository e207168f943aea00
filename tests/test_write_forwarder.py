"""WriteForwarder (real HTTP on loopback): a write the gateway's process cannot take answers 503
with what to do next, and the API process logs why; nothing is assumed done."""

import io
from types import SimpleNamespace

from twisted.internet import defer, reactor
from twisted.trial import unittest

from gateway.http.api import ApiError
from gateway.http.process import WriteForwarder
from live_site import refusing_port


def put_sync_mode():
    headers = {"authorization": "Bearer test-token"}
    return SimpleNamespace(request=SimpleNamespace(method=b"PUT", uri=b"/api/sync", path=b"/api/sync",
                                                   content=io.BytesIO(b'{"mode": "all"}'), getHeader=headers.get))


class WriteForwarderTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_a_write_the_gateway_does_not_take_is_a_503_saying_to_check_and_retry(self):
        with refusing_port() as port:
            forwarder = WriteForwarder(reactor, f"http://127.0.0.1:{port}", follower=None)
            with self.assertRaises(ApiError) as raised:
                yield forwarder.forward(put_sync_mode())
        self.assertEqual(raised.exception.status, 503)
        self.assertIn("see whether the change was made, then retry", str(raised.exception))
