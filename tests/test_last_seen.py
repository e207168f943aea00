"""What LAST SEEN shows: the last frame a terminal sent, read from its session while it is online
(no database write per frame), and kept when it goes offline. StringTransport and task.Clock."""

from twisted.internet import defer

from gateway.http.terminals import terminal_json
from gateway.terminals import Terminal, TerminalRegistry
from protocol.messages import Command, request
from test_session import SECRET, Collaborators, Peer


class Writes:
    """The registry's database: counts the writes, which succeed at once."""

    def __init__(self):
        self.count = 0

    def write(self, work, *args):
        self.count += 1
        return defer.succeed(None)


class Registered(Collaborators):
    """Sessions report to a real TerminalRegistry that knows terminal 7."""

    def __init__(self):
        super().__init__()
        self.db = Writes()
        self.registry = TerminalRegistry(self.db, self.clock, "allowlist", None, [])
        self.registry.terminals[7] = Terminal(7, secret=SECRET)

    def online(self, connection):
        return self.registry.online(connection)

    def offline(self, connection):
        self.registry.offline(connection)


def last_seen_ms(gateway: Registered) -> int:
    return terminal_json(gateway.registry.terminals[7], 0)["last_seen_ms"]


def test_last_seen_follows_every_frame_without_a_write_and_stays_at_the_last_one_after_a_disconnect():
    gateway = Registered()
    gateway.clock.advance(1000)
    peer = Peer(gateway)
    peer.establish()
    assert last_seen_ms(gateway) == 1_000_000
    writes_at_connect = gateway.db.count

    gateway.clock.advance(20)
    peer.send(request(Command.KEEPALIVE, terminal_id=7, seq=1))
    assert last_seen_ms(gateway) == 1_020_000
    gateway.clock.advance(7)
    peer.send(request(Command.EVENTS, dict(events=[]), terminal_id=7, seq=2))
    assert last_seen_ms(gateway) == 1_027_000
    assert gateway.db.count == writes_at_connect

    gateway.clock.advance(60)  # the link drops a minute after the last frame
    peer.link.connectionLost()
    assert not gateway.registry.terminals[7].online
    assert last_seen_ms(gateway) == 1_027_000
    assert gateway.db.count == writes_at_connect + 1  # stored once, at the disconnect
