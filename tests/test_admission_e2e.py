"""End to end: who may talk to the gateway, and what bad bytes on one connection cost the others."""

import os

from twisted.internet import defer, protocol, reactor
from twisted.logger import formatEvent, globalLogPublisher

from live_site import LiveTestCase, Site, secret_of, wait_until
from simulator.people import People
from simulator.tcp import DialingTerminal
from simulator.terminal import Terminal


class Garbage(protocol.Protocol):
    """A client that sends random bytes and notes when the gateway hangs up."""

    def connectionMade(self):
        self.closed = False
        self.transport.write(os.urandom(4096))

    def connectionLost(self, reason=protocol.connectionDone):
        self.closed = True


class AdmissionTests(LiveTestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.log_lines: list[str] = []
        globalLogPublisher.addObserver(self._observe)
        self.addCleanup(globalLogPublisher.removeObserver, self._observe)
        self.site = Site(f"sqlite:///{self.tmp_path / 'gateway.db'}", terminal_ids=(101, 102)).start()
        self.addCleanup(self.site.stop)
        yield wait_until(self.site.online, "both terminals online")

    def _observe(self, event):
        self.log_lines.append(formatEvent(event))

    def logged(self, fragment: str) -> bool:
        return any(fragment in line for line in self.log_lines)

    def dial(self, terminal: Terminal) -> DialingTerminal:
        dialer = DialingTerminal(terminal, reactor, "127.0.0.1", self.site.port).start()
        self.addCleanup(dialer.go_offline)
        return dialer

    @defer.inlineCallbacks
    def assert_others_still_sync(self):
        person = People(seed=3).person("after-1")
        self.site.terminals[101].enroll(person)
        yield wait_until(lambda: self.site.terminals[102].users.get("after-1") == person, "sync between the others")

    @defer.inlineCallbacks
    def test_unknown_terminal_is_refused_and_logged(self):
        stranger = Terminal(999, "whatever")
        self.dial(stranger)
        yield wait_until(lambda: self.logged("refused terminal 999"), "the refusal in the log")
        self.assertNotIn(999, {t.terminal_id for t in self.site.gateway.registry.connected()})
        self.assertFalse(stranger.authenticated)
        yield self.assert_others_still_sync()

    @defer.inlineCallbacks
    def test_wrong_secret_is_refused_and_logged(self):
        self.site.dialers[102].go_offline()
        impostor = Terminal(102, "not-the-secret")
        impostor.enroll(People(seed=5).person("impostor-1"))
        self.dial(impostor)
        yield wait_until(lambda: self.logged("refused terminal 102") and self.logged("wrong proof"), "the refusal in the log")
        self.assertFalse(self.site.online(102))
        self.assertEqual(self.site.count_events(terminal_id=102), 0)  # nothing it sent was stored
        self.assertIsNone(self.site.server_record("impostor-1"))

    @defer.inlineCallbacks
    def test_a_newer_authenticated_connection_replaces_the_older_one(self):
        rebooted = Terminal(101, secret_of(101))  # the same terminal, back before its old link timed out
        self.site.dialers[101].stop_redialling()  # the old connection must not dial back once replaced
        self.dial(rebooted)
        yield wait_until(lambda: self.logged("replaced by a new authenticated connection"), "the replacement in the log")
        yield wait_until(lambda: self.site.dialers[101].link is None, "the old connection closed")
        self.assertTrue(self.site.online(101))
        person = People(seed=4).person("rebooted-1")
        rebooted.enroll(person)
        yield wait_until(lambda: self.site.terminals[102].users.get("rebooted-1") == person, "sync through the new connection")

    @defer.inlineCallbacks
    def test_garbage_closes_only_that_connection(self):
        garbage = Garbage()
        yield protocol.ClientCreator(reactor, lambda: garbage).connectTCP("127.0.0.1", self.site.port)
        yield wait_until(lambda: garbage.closed, "the gateway closing the garbage connection")
        self.assertTrue(self.logged("corrupt data before authentication"))
        self.assertTrue(self.site.online(101, 102))
        yield self.assert_others_still_sync()


class OpenAdmissionTests(LiveTestCase):
    """Labs: any terminal id may join, but only with the shared secret, and only then is it recorded."""

    @defer.inlineCallbacks
    def test_a_stranger_without_the_secret_leaves_no_trace_and_one_with_it_joins(self):
        site = Site(f"sqlite:///{self.tmp_path / 'gateway.db'}", terminal_ids=(), admission="open", default_secret="lab")
        site.start()
        self.addCleanup(site.stop)
        impostor = DialingTerminal(Terminal(901, "guess"), reactor, "127.0.0.1", site.port).start()
        self.addCleanup(impostor.go_offline)
        registry = site.gateway.registry
        yield wait_until(lambda: (site.gateway.metrics.registry.get_sample_value(
            "gateway_terminals_refused_total", {"reason": "auth_failed"}) or 0) >= 1, "the impostor refused")
        self.assertNotIn(901, registry.terminals)
        member = DialingTerminal(Terminal(902, "lab"), reactor, "127.0.0.1", site.port).start()
        self.addCleanup(member.go_offline)
        yield wait_until(lambda: site.online(902), "the lab terminal online")
        self.assertEqual(registry.terminals[902].admission, "admitted")


class DialOutRefusalTests(LiveTestCase):
    @defer.inlineCallbacks
    def test_a_refused_terminal_the_gateway_dials_is_redialled_ever_more_slowly(self):
        """It answers, so the connection succeeds; only a session that authenticated resets the backoff."""
        site = Site(f"sqlite:///{self.tmp_path / 'gateway.db'}", terminal_ids=(), listening_ids=(104,))
        site.terminals[104].secret = b"not the configured secret"
        site.start()
        self.addCleanup(site.stop)
        metrics = site.gateway.metrics.registry
        yield wait_until(lambda: (metrics.get_sample_value("gateway_terminals_refused_total", {"reason": "auth_failed"}) or 0) >= 3,
                         "three refusals", timeout=20)
        (dialer,) = site.gateway.serving["native"].services
        self.assertGreaterEqual(dialer.attempts, 2)  # a refused connection does not restart the backoff
