"""TerminalRegistry: which terminals exist, which may connect, and which session speaks for each.

Admission policy (config ``admission``):
- ``allowlist``: only terminals listed in the configuration or admitted by an administrator;
- ``pending``: an unknown terminal is recorded as pending and refused until an administrator
  admits it (giving its secret);
- ``open`` (labs): any terminal id is admitted, authenticated with the ``default_secret``.

One connection per terminal: a newer *authenticated* connection replaces the older one (a
terminal that rebooted reconnects before its old TCP connection times out), so an impostor
without the secret can never push a terminal off. The registry is what connections report to
(``Admission`` and ``Presence`` in gateway/sync/connection.py); the gateway hears of terminals coming
and going through the ``on_online`` and ``on_offline`` it gives the registry, and of an
administrator admitting one through ``on_admitted`` (a bus greets it then, not at its next try).

Several gateway processes on one PostgreSQL database (``claims``, gateway/process/claims.py): a
connection becomes its terminal's current one only once this process holds the terminal's
claim, so one process at a time serves a terminal; until then it is the terminal's ``claiming``
connection. A newer connection taken by another process closes the one here (``replaced_elsewhere``).
"""

from dataclasses import dataclass, field

from sqlalchemy import delete, select
from twisted.internet import defer
from twisted.logger import Logger

from gateway.admission import ADMISSION_POLICIES
from gateway.store.database import upsert
from gateway.kinds import ConfiguredTerminal, kinds
from gateway.store.notices import ADMISSIONS, notify
from gateway.store.schema import pending_pulls, push_commands, terminals, zk_attendance, zk_devices, zk_holdings
from gateway.sync.connection import Refused, TerminalConnection, TerminalInfo
from gateway.sync.syncmode import format_groups, parse_groups
from protocol.errors import ErrorCode

log = Logger(namespace="gateway.terminals")

ADMITTED, PENDING, REFUSED = "admitted", "pending", "refused"


@dataclass
class Terminal:
    """What the gateway knows of one terminal, online or not."""

    terminal_id: int
    admission: str = ADMITTED
    name: str = ""
    secret: bytes | None = None
    access_groups: frozenset[int] = frozenset()
    model: str = ""
    firmware: str = ""
    link: str = ""
    last_seen_ms: int | None = None
    cursor: int = 0
    kind: str = "native"  # its kind's name in gateway/kinds.py: ours unless configured as another
    offline_reason: str = ""  # why its last link ended or could not be made, when the driver knows
    clock_drift_s: float | None = None  # how far its clock was ahead of the gateway's at its last connect
    connection: TerminalConnection | None = field(default=None, repr=False)
    # Several processes: the connection waiting for this process's claim, and when the newest
    # connection here authenticated (a newer one in another process closes it).
    claiming: TerminalConnection | None = field(default=None, repr=False)
    since_s: float = 0.0
    elsewhere: bool = False  # served by another process on the same database (its claims, checked every few seconds)

    @property
    def online(self) -> bool:
        return self.connection is not None or self.elsewhere

    @property
    def heard_ms(self) -> int | None:
        """When it last sent a frame: its connection keeps that while it is online, so no frame
        costs a database write; ``last_seen_ms``, stored at connect and disconnect, otherwise."""
        if self.connection is not None:
            return int(self.connection.last_heard_s * 1000)
        return self.last_seen_ms


class TerminalRegistry:
    def __init__(self, db, clock, policy: str, default_secret: str | None, configured: list[ConfiguredTerminal], *,
                 on_online=lambda connection: None, on_offline=lambda connection: None, on_admitted=lambda terminal_id: None,
                 claims=None):
        if policy not in ADMISSION_POLICIES:
            raise ValueError(f"admission must be one of {', '.join(ADMISSION_POLICIES)}, not {policy!r}")
        if policy == "open" and not default_secret:
            raise ValueError("admission 'open' needs a default_secret")
        self._db = db
        self._clock = clock
        self._on_online = on_online
        self._on_offline = on_offline
        self._on_admitted = on_admitted
        self.policy = policy
        self._default_secret = default_secret.encode() if default_secret else None
        self._configured = configured
        self._claims = claims  # a TerminalClaims when other processes share the database; None: this one alone
        self.terminals: dict[int, Terminal] = {}
        # Those with a connection here: asked for at every change, connect and sweep, so kept
        # rather than found among every terminal ever known (10,000 connects were 50 million steps).
        self._online: dict[int, Terminal] = {}

    def load(self) -> None:
        """Read the terminals table and lay the configuration over it (start-up, off the reactor)."""
        rows = self._db.run_now(lambda conn: conn.execute(select(terminals)).mappings().all())
        for row in rows:
            self.terminals[row["terminal_id"]] = Terminal(
                terminal_id=row["terminal_id"],
                admission=row["admission"],
                name=row["name"],
                secret=row["secret"].encode() if row["secret"] else None,
                access_groups=parse_groups(row["access_groups"]),
                model=row["model"],
                firmware=row["firmware"],
                link=row["link"],
                last_seen_ms=row["last_seen_ms"],
                cursor=row["cursor"],
                kind=row["kind"],
            )
        for entry in self._configured:
            term = self.terminals.setdefault(entry.id, Terminal(entry.id))
            term.admission = ADMITTED
            term.kind = entry.kind
            term.secret = entry.secret.encode() if entry.secret else None
            term.name = term.name if entry.name is None else entry.name
            term.access_groups = entry.groups

    def keep_configuration(self) -> None:
        """Store the configured terminals ``load`` laid over the table, once the start succeeded:
        a start that fails (a port in use) leaves no terminal admitted behind it."""
        self._db.run_now(_save_terminals, [self._row(t) for t in self.terminals.values()])

    # -- admission ---------------------------------------------------------------------------

    def secret_for(self, terminal_id: int, info: TerminalInfo, description: str) -> bytes:
        """The secret to check this terminal's proof against; Refused if it may not connect."""
        term = self.terminals.get(terminal_id)
        if term is None and self.policy == "open":
            return self._default_secret  # registered by online(), once it has proved it holds the secret
        term = self._admitted(terminal_id, term, "native", info, description)
        kind = kinds()[term.kind]
        if not kind.native_sessions:
            raise Refused(ErrorCode.UNKNOWN_TERMINAL, f"terminal {terminal_id} is {kind.description}")
        secret = term.secret or self._default_secret
        if secret is None:
            raise Refused(ErrorCode.AUTH_FAILED, f"no secret is configured for terminal {terminal_id}")
        return secret

    def caller_admitted(self, terminal_id: int, kind: str, info: TerminalInfo, description: str) -> None:
        """Whether a terminal of a ``kind`` without native sessions may talk (it proves nothing: a
        PUSH device only says its serial); Refused if not. An unknown one is recorded as that kind:
        pending (policy ``pending``), or admitted (``open``)."""
        term = self.terminals.get(terminal_id)
        if term is None and self.policy == "open":
            self._register(Terminal(terminal_id, ADMITTED, kind=kind, model=info.model, firmware=info.firmware, link=description))
            return
        term = self._admitted(terminal_id, term, kind, info, description)
        if term.kind != kind:
            raise Refused(ErrorCode.UNKNOWN_TERMINAL, f"terminal {terminal_id} is {kinds()[term.kind].description}")

    def _admitted(self, terminal_id: int, term: Terminal | None, kind: str, info: TerminalInfo, description: str) -> Terminal:
        """``term`` if an administrator or the configuration admitted it; an unknown one is recorded
        as pending of ``kind`` under policy ``pending``; Refused otherwise."""
        if term is None and self.policy == "pending":
            term = self._register(Terminal(terminal_id, PENDING, kind=kind, model=info.model, firmware=info.firmware, link=description))
            log.info("terminal {tid} on {link} is pending admission", tid=terminal_id, link=description)
        if term is None:
            raise Refused(ErrorCode.UNKNOWN_TERMINAL, f"terminal {terminal_id} is not known to this gateway")
        if term.admission == PENDING:
            raise Refused(ErrorCode.PENDING_ADMISSION, f"terminal {terminal_id} waits for an administrator to admit it")
        if term.admission == REFUSED:
            raise Refused(ErrorCode.UNKNOWN_TERMINAL, f"terminal {terminal_id} was refused by an administrator")
        return term

    def set_admission(self, terminal_id: int, admission: str, secret: str | None = None, access_groups: frozenset | None = None):
        """An administrator's decision; returns a Deferred that fires once it is stored.

        Admitting an id never seen, with its secret, registers it ahead of its first connection.
        ``access_groups``, given, replace the terminal's (what sync mode ``specific`` sends it).
        """
        term = self.terminals.get(terminal_id)
        if term is None and admission == ADMITTED and secret:
            term = self.terminals[terminal_id] = Terminal(terminal_id)
        if term is None:
            raise KeyError(f"no terminal {terminal_id}")
        term.admission = admission
        if secret:
            term.secret = secret.encode()
        if access_groups is not None:
            term.access_groups = access_groups
        for connection in (term.claiming, term.connection):
            if admission != ADMITTED and connection is not None:
                connection.close(f"{admission} by an administrator")
        if admission == ADMITTED:
            self._on_admitted(terminal_id)
        return self._db.write(_save_decision, [self._row(term)])

    def remove(self, terminal_id: int):
        """Forget a terminal (its events stay in the log); a Deferred that fires once stored."""
        if terminal_id not in self.terminals:
            raise KeyError(f"no terminal {terminal_id}")
        self.remove_here(terminal_id)
        return self._db.write(_forget_terminal, terminal_id)

    def _register(self, term: Terminal) -> Terminal:
        self.terminals[term.terminal_id] = term
        self._db.write(_save_decision, [self._row(term)]).addErrback(
            lambda f: log.warn("could not store terminal {tid}: {e}", tid=term.terminal_id, e=f.getErrorMessage())
        )
        return term

    def reload(self, terminal_id: int):
        """Another process registered, admitted, refused or removed ``terminal_id``: take its
        stored row as it is now; a Deferred that fires once done."""
        return self._db.read(_stored_terminal, terminal_id).addCallback(lambda row: self._take(terminal_id, row))

    def reload_all(self):
        """This process did not hear the others for a while: take every stored row as it is now.
        A terminal missing from the table is left (it may be one registered here, not yet stored)."""
        return self._db.read(_stored_terminals).addCallback(lambda rows: [self._take(row["terminal_id"], row) for row in rows])

    def _take(self, terminal_id: int, row) -> None:
        term = self.terminals.get(terminal_id)
        if row is None:
            if term is not None:
                self.remove_here(terminal_id)
            return
        if term is None:
            term = self.terminals[terminal_id] = Terminal(terminal_id)
        term.admission, term.name, term.access_groups = row["admission"], row["name"], parse_groups(row["access_groups"])
        term.kind = row["kind"]
        term.secret = row["secret"].encode() if row["secret"] else term.secret
        for connection in (term.claiming, term.connection):
            if term.admission != ADMITTED and connection is not None:
                connection.close(f"{term.admission} by an administrator")

    def remove_here(self, terminal_id: int) -> None:
        """Forget a terminal another process removed (the database has forgotten it already)."""
        term = self.terminals.pop(terminal_id)
        self._online.pop(terminal_id, None)
        # Detached first: a claim still pending then finds its connection unwanted, and closing
        # them finds no terminal to take offline, so a removed terminal is never served again.
        connections, term.claiming, term.connection = (term.claiming, term.connection), None, None
        for connection in connections:
            if connection is not None:
                connection.close("removed by an administrator")
        if self._claims is not None:
            self._claims.release(terminal_id)

    def _store(self, term: Terminal) -> None:
        self._db.write(_save_terminals, [self._row(term)]).addErrback(
            lambda f: log.warn("could not store terminal {tid}: {e}", tid=term.terminal_id, e=f.getErrorMessage())
        )

    # -- connections (Presence) --------------------------------------------------------------

    def online(self, connection: TerminalConnection) -> bool:
        """Make ``connection`` the one that speaks for its terminal (once this process holds its
        claim, when there are several); False if an administrator refused or removed the
        terminal while it was shaking hands (the caller closes it)."""
        term = self.terminals.get(connection.terminal_id)
        if term is None and self.policy == "open":
            term = self._register(Terminal(connection.terminal_id, ADMITTED, secret=self._default_secret))
        if term is None or term.admission != ADMITTED:
            return False
        term.since_s = self._clock.seconds()
        if self._claims is None:
            self._serve(term, connection)
            return True
        old, term.claiming = term.claiming, connection
        if old is not None and old is not connection:
            old.replaced(connection.description)
        d = self._claims.claim(term.terminal_id, term.since_s, lambda: term.claiming is connection)
        d.addCallback(self._claimed, term, connection)
        d.addErrback(lambda f: log.failure("claiming terminal {tid}", f, tid=term.terminal_id))
        return True

    @defer.inlineCallbacks
    def _claimed(self, held: bool, term: Terminal, connection: TerminalConnection):
        """Serve a claimed terminal from its cursor as stored: the process that served it
        before moved it meanwhile."""
        if not held:
            return
        if term.connection is None:
            stored = yield self._db.read(_stored_cursor, term.terminal_id)
            term.cursor = max(term.cursor, stored or 0)
        if term.claiming is connection:
            self._serve(term, connection)
        elif term.claiming is None and term.connection is None:  # it ended while its cursor was read
            self._claims.release(term.terminal_id)

    def _serve(self, term: Terminal, connection: TerminalConnection) -> None:
        if term.claiming is connection:
            term.claiming = None
        old, term.connection = term.connection, connection
        self._online[term.terminal_id] = term
        term.elsewhere = False
        if old is not None and old is not connection:
            old.replaced(connection.description)
        term.model = connection.info.model or term.model
        term.firmware = connection.info.firmware or term.firmware
        term.clock_drift_s = connection.info.clock_drift_s
        term.link = connection.description
        term.offline_reason = ""
        term.last_seen_ms = self._now_ms()
        self._store(term)
        self._on_online(connection)

    def replaced_elsewhere(self, terminal_id: int, since_s: float) -> None:
        """Another process took a connection of this terminal that authenticated at ``since_s``:
        an older one here gives way to it."""
        term = self.terminals.get(terminal_id)
        if term is None or term.since_s > since_s:
            return
        for connection in (term.claiming, term.connection):
            if connection is not None:
                connection.replaced("another gateway process")

    def served_elsewhere(self, cursors: dict[int, int]) -> None:
        """The terminals other processes serve now, with their stored cursors: shown online here."""
        for term in self.terminals.values():
            term.elsewhere = term.terminal_id in cursors and term.connection is None
            if term.elsewhere:
                term.cursor = max(term.cursor, cursors[term.terminal_id])

    def heard_elsewhere(self, links: dict[int, dict]) -> None:
        """What the processes serving other terminals last reported of their links (``link``,
        ``heard_ms``, ``model``, ``firmware``, ``clock_drift_s``; gateway/process/reports.py),
        shown for those terminals here."""
        for terminal_id, reported in links.items():
            term = self.terminals.get(terminal_id)
            if term is None or term.connection is not None:
                continue
            term.link, term.model, term.firmware = reported["link"], reported["model"], reported["firmware"]
            term.clock_drift_s, term.last_seen_ms = reported["clock_drift_s"], reported["heard_ms"]

    def claim_lost(self, terminal_id: int) -> None:
        """This process lost its claim (its lock connection broke and another process took it)."""
        connection = self.connection(terminal_id)
        if connection is not None:
            connection.close("another gateway process serves it now")

    def offline(self, connection: TerminalConnection) -> None:
        """Every connection that ends comes here, the current one of its terminal or not (one
        replaced by a newer connection, or whose terminal was removed): the gateway lets go of it."""
        term = self.terminals.get(connection.terminal_id)
        if term is not None and term.claiming is connection:
            term.claiming = None
        if term is not None and term.connection is connection:
            term.connection = None
            del self._online[term.terminal_id]
            term.last_seen_ms = int(connection.last_heard_s * 1000)
            self._store(term)
            if self._claims is not None and term.claiming is None:  # a newer one waiting here keeps the claim
                self._claims.release(term.terminal_id)
        self._on_offline(connection)

    def refused(self, terminal_id: int, description: str, reason: str) -> bool:
        term = self.terminals.get(terminal_id)
        if term is None:
            return False
        if term.connection is None:  # a refused stranger claiming an online terminal's id changes nothing shown
            term.link = description
            term.offline_reason = f"refused: {reason}"
        return True

    def offline_reason(self, terminal_id: int, reason: str) -> None:
        """Why a terminal's link ended or could not be made (drivers that know say so), for people."""
        term = self.terminals.get(terminal_id)
        if term is not None and term.connection is None:
            term.offline_reason = reason

    def connected(self) -> list[Terminal]:
        """Terminals online now (with a connection here)."""
        return list(self._online.values())

    def online_count(self) -> int:
        return len(self._online)

    def connection(self, terminal_id: int) -> TerminalConnection | None:
        term = self.terminals.get(terminal_id)
        return term.connection if term is not None else None

    def _now_ms(self) -> int:
        return int(self._clock.seconds() * 1000)

    @staticmethod
    def _row(t: Terminal) -> dict:
        return dict(
            terminal_id=t.terminal_id,
            name=t.name,
            admission=t.admission,
            secret=t.secret.decode() if t.secret else None,
            access_groups=format_groups(t.access_groups),
            model=t.model,
            firmware=t.firmware,
            link=t.link,
            last_seen_ms=t.last_seen_ms,
            cursor=t.cursor,
            kind=t.kind,
        )


def _stored_cursor(conn, terminal_id: int) -> int | None:
    return conn.execute(select(terminals.c.cursor).where(terminals.c.terminal_id == terminal_id)).scalar()


def _stored_terminals(conn):
    return conn.execute(select(terminals)).mappings().all()


def _stored_terminal(conn, terminal_id: int):
    return conn.execute(select(terminals).where(terminals.c.terminal_id == terminal_id)).mappings().first()


def _save_decision(conn, rows: list[dict]) -> None:
    """A terminal registered, admitted or refused: stored, and the other processes told."""
    _save_terminals(conn, rows)
    for row in rows:
        notify(conn, ADMISSIONS, str(row["terminal_id"]))


def _forget_terminal(conn, terminal_id: int) -> None:
    notify(conn, ADMISSIONS, str(terminal_id))
    conn.execute(delete(pending_pulls).where(pending_pulls.c.terminal_id == terminal_id))
    # A PUSH device's id is its serial's: admitted again, it must not be sent what was owed before.
    conn.execute(delete(push_commands).where(push_commands.c.terminal_id == terminal_id))
    conn.execute(delete(zk_holdings).where(zk_holdings.c.terminal_id == terminal_id))
    conn.execute(delete(zk_attendance).where(zk_attendance.c.terminal_id == terminal_id))
    conn.execute(delete(zk_devices).where(zk_devices.c.terminal_id == terminal_id))
    conn.execute(delete(terminals).where(terminals.c.terminal_id == terminal_id))


def _save_terminals(conn, rows: list[dict]) -> None:
    """Upsert terminal rows, leaving cursors alone: only the pusher moves a cursor."""
    if rows:
        upsert(conn, terminals, rows, key=["terminal_id"], update=[c for c in rows[0] if c not in ("terminal_id", "cursor")])
