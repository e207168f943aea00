"""End to end: the PostgreSQL server goes down while terminals keep enrolling and editing.

What a person sees: `Fail to save to the server DB` for each affected user, terminals keeping
their data and their unacknowledged events; when the server returns, everything is stored once
and every terminal converges.
"""

import pytest
from twisted.internet import defer

from gateway.sync.monitor import SAVE_FAILED
from live_site import LiveTestCase, Site, wait_until
from simulator.people import People

A, B, C = 101, 102, 103


class DatabaseDownTests(LiveTestCase):
    timeout = 120

    @pytest.fixture(autouse=True)
    def _cluster(self, own_postgres):
        self.cluster = own_postgres

    @defer.inlineCallbacks
    def test_events_wait_on_the_terminals_and_sync_resumes_when_the_server_returns(self):
        site = Site(self.cluster.new_database()).start()
        self.addCleanup(site.stop)
        site.gateway.eventlog.retry_after = lambda attempt: 0.2
        site.gateway.puller.retry_after = lambda attempt: 0.2
        yield wait_until(site.online, "all terminals online")
        people = People(seed=21)
        known = people.person("known")
        site.terminals[A].enroll(known)
        yield wait_until(lambda: all(site.terminals[t].users.get("known") == known for t in (B, C)), "the first user synced")

        self.cluster.halt()
        newcomer = people.person("newcomer")
        site.terminals[A].enroll(newcomer)
        finger = people.fingerprint(9)
        site.terminals[B].edit("known", fingerprints=site.terminals[B].users["known"].fingerprints + (finger,))
        registry = site.gateway.metrics.registry
        yield wait_until(lambda: (registry.get_sample_value("gateway_failures_total", {"kind": "event_commit"}) or 0) >= 2,
                         "commits failing while the server is down")
        self.assertTrue(any(e.user_id == "newcomer" for e in site.terminals[A].log), "A still holds its event")
        self.assertTrue(any(e.user_id == "known" for e in site.terminals[B].log), "B still holds its event")
        self.assertNotIn("newcomer", site.terminals[C].users)

        self.cluster.resume()
        yield wait_until(
            lambda: site.terminals[C].users.get("newcomer") == newcomer
            and finger in site.terminals[C].users["known"].fingerprints
            and not any(t.log for t in site.terminals.values()),
            "every change synced and every log acknowledged after the server returned",
            timeout=60,
        )
        for terminal_id, terminal in site.terminals.items():
            self.assertEqual(site.stored_event_ids(terminal_id), list(range(1, terminal.next_event_id)))
        self.assertGreaterEqual(site.count_events(type=SAVE_FAILED, user_id="newcomer", terminal_id=A), 1)
        self.assertGreaterEqual(site.count_events(type=SAVE_FAILED, user_id="known", terminal_id=B), 1)
