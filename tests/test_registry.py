"""TerminalRegistry as connections' Presence (unit): one current connection per terminal, and
every connection that ends is let go of, the current one or not."""

from twisted.internet import defer, task

from gateway.connection import TerminalInfo
from gateway.terminals import ADMITTED, Terminal, TerminalRegistry


class Writes:
    """A database that stores nothing and says so at once."""

    def write(self, work, *args):
        return defer.succeed(None)


class Connection:
    """A connection that reports its end to the registry, as a session does."""

    def __init__(self, registry, terminal_id):
        self.registry = registry
        self.terminal_id = terminal_id
        self.description = f"test link of {terminal_id}"
        self.info = TerminalInfo("M", "1.0")
        self.last_heard_s = 0.0
        self.closed = None

    def close(self, reason):
        self.closed = reason
        self.registry.offline(self)

    def replaced(self, by):
        self.close(f"replaced by {by}")


def registry_with(terminal_id=7):
    ended = []
    registry = TerminalRegistry(Writes(), task.Clock(), "allowlist", None, [], on_offline=ended.append)
    registry.terminals[terminal_id] = Terminal(terminal_id, ADMITTED, secret=b"s")
    return registry, ended


def test_a_replaced_connection_is_let_go_of_and_the_newer_one_stays():
    registry, ended = registry_with()
    older, newer = Connection(registry, 7), Connection(registry, 7)
    assert registry.online(older) and registry.online(newer)
    assert "replaced" in older.closed
    assert ended == [older]
    assert registry.connection(7) is newer


def test_the_connection_of_a_removed_terminal_is_let_go_of():
    registry, ended = registry_with()
    current = Connection(registry, 7)
    registry.online(current)
    registry.remove(7)
    assert current.closed == "removed by an administrator"
    assert ended == [current]
    assert registry.connected() == []
