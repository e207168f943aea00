"""TerminalRegistry as connections' Presence (unit): one current connection per terminal, and
every connection that ends is let go of, the current one or not."""

from twisted.internet import defer, task

from gateway.sync.connection import TerminalInfo
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


def test_a_known_terminal_refused_shows_the_link_and_why_while_offline_and_a_stranger_changes_nothing_shown():
    registry, _ = registry_with()
    assert registry.refused(7, "tcp 192.0.2.4:40000", "wrong proof") is True
    assert (registry.terminals[7].link, registry.terminals[7].offline_reason) == ("tcp 192.0.2.4:40000", "refused: wrong proof")
    assert registry.online(Connection(registry, 7))
    assert registry.terminals[7].offline_reason == ""
    assert registry.refused(7, "tcp 198.51.100.9:1", "wrong proof") is True  # someone else claiming the online terminal's id
    assert registry.terminals[7].link == "test link of 7"
    assert registry.refused(99, "tcp 198.51.100.9:1", "not known") is False and 99 not in registry.terminals


def test_the_connection_of_a_removed_terminal_is_let_go_of():
    registry, ended = registry_with()
    current = Connection(registry, 7)
    registry.online(current)
    registry.remove(7)
    assert current.closed == "removed by an administrator"
    assert ended == [current]
    assert registry.connected() == []


class Walked(dict):
    """Terminals, counting each walk through all of them."""

    walks = 0

    def values(self):
        self.walks += 1
        return super().values()

    def __iter__(self):
        self.walks += 1
        return super().__iter__()


def test_the_terminals_online_are_known_without_walking_every_terminal_ever_known():
    registry, _ = registry_with()
    registry.terminals = Walked({t: Terminal(t, ADMITTED, secret=b"s") for t in range(1, 10_001)})
    first, second, third = (Connection(registry, t) for t in (7, 8, 9))
    for connection in (first, second, third):
        registry.online(connection)
    second.close("link closed")
    registry.remove(9)
    assert [t.terminal_id for t in registry.connected()] == [7]
    assert registry.online_count() == 1
    assert registry.terminals.walks == 0


# -- several processes: a connection is served once this process holds the terminal's claim ----


class Database(Writes):
    """Stores nothing; the stored cursor of every terminal is ``cursor``."""

    cursor = 5

    def read(self, work, *args):
        return defer.succeed(self.cursor)


class Claims:
    """TerminalClaims as the registry sees it: each claim waits until the test grants it."""

    def __init__(self):
        self.pending: list[tuple[int, float, object, defer.Deferred]] = []
        self.released: list[int] = []

    def claim(self, terminal_id, since_s, wanted):
        d = defer.Deferred()
        self.pending.append((terminal_id, since_s, wanted, d))
        return d

    def grant(self):
        terminal_id, _, wanted, d = self.pending.pop(0)
        d.callback(wanted())

    def release(self, terminal_id):
        self.released.append(terminal_id)


def claiming_registry():
    clock, claims, online = task.Clock(), Claims(), []
    registry = TerminalRegistry(Database(), clock, "allowlist", None, [], on_online=online.append, claims=claims)
    registry.terminals[7] = Terminal(7, ADMITTED, secret=b"s")
    return registry, claims, online, clock


def test_a_connection_is_served_only_once_its_claim_is_held_and_from_the_stored_cursor():
    registry, claims, online, _ = claiming_registry()
    connection = Connection(registry, 7)
    assert registry.online(connection)
    assert registry.connection(7) is None and online == []
    claims.grant()
    assert registry.connection(7) is connection and online == [connection]
    assert registry.terminals[7].cursor == Database.cursor  # another process may have moved it


def test_a_connection_that_ends_while_claiming_is_never_served_and_lets_go_of_nothing_it_did_not_hold():
    registry, claims, online, _ = claiming_registry()
    connection = Connection(registry, 7)
    registry.online(connection)
    connection.close("terminal gone")
    claims.grant()  # the claim loop asks wanted(): no longer
    assert registry.connection(7) is None and online == []
    assert claims.released == []


def test_a_terminal_removed_while_its_claim_is_pending_is_never_served():
    registry, claims, online, _ = claiming_registry()
    connection = Connection(registry, 7)
    registry.online(connection)
    registry.remove_here(7)  # another process removed it
    claims.grant()
    assert connection.closed == "removed by an administrator"
    assert online == [] and registry.connected() == [] and registry.online_count() == 0


def test_a_newer_connection_in_another_process_closes_this_one_and_lets_go_of_the_claim():
    registry, claims, _, clock = claiming_registry()
    clock.advance(100)
    connection = Connection(registry, 7)
    registry.online(connection)
    claims.grant()
    registry.replaced_elsewhere(7, since_s=99.0)  # older than ours: ours stays
    assert connection.closed is None
    registry.replaced_elsewhere(7, since_s=101.0)
    assert connection.closed == "replaced by another gateway process"
    assert registry.connection(7) is None and claims.released == [7]


def test_a_newer_connection_here_takes_over_without_letting_go_of_the_claim():
    registry, claims, _, _ = claiming_registry()
    older, newer = Connection(registry, 7), Connection(registry, 7)
    registry.online(older)
    claims.grant()
    registry.online(newer)
    claims.grant()
    assert "replaced" in older.closed
    assert registry.connection(7) is newer
    assert claims.released == []


def test_a_lost_claim_closes_the_connection():
    registry, claims, _, _ = claiming_registry()
    connection = Connection(registry, 7)
    registry.online(connection)
    claims.grant()
    registry.claim_lost(7)
    assert connection.closed == "another gateway process serves it now"


class Rows(Writes):
    """The terminals table as another process left it."""

    def __init__(self, rows):
        self.rows = rows

    def read(self, work, *args):
        return defer.succeed(self.rows if not args else next((r for r in self.rows if r["terminal_id"] == args[0]), None))


def stored_row(terminal_id, admission, secret="s2"):
    return dict(terminal_id=terminal_id, admission=admission, name=f"t{terminal_id}", secret=secret, access_groups=",3,", kind="native")


def test_a_decision_taken_in_another_process_is_followed_here():
    db = Rows([])
    registry = TerminalRegistry(db, task.Clock(), "allowlist", None, [])
    registry.terminals[7] = Terminal(7, ADMITTED, secret=b"s")
    current = Connection(registry, 7)
    registry.online(current)
    db.rows = [stored_row(7, "refused"), stored_row(8, ADMITTED)]
    registry.reload(7)
    assert current.closed == "refused by an administrator"
    registry.reload_all()
    assert registry.terminals[8].admission == ADMITTED and registry.terminals[8].secret == b"s2"
    assert registry.terminals[8].access_groups == frozenset({3})
    db.rows = []
    registry.reload(8)
    assert 8 not in registry.terminals
