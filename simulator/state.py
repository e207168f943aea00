"""Flash: what a simulated terminal keeps across a restart (``simulator terminal --state FILE``).

A real terminal writes its users, its event counter and the events the gateway has not
acknowledged to flash before it answers; ``FlashTerminal`` does the same with a JSON file,
replaced atomically (written beside it, flushed, renamed over it) after every change, so a
simulator killed at any moment leaves either the old state or the new one, never half of each.
"""

import json
import os
from pathlib import Path

from twisted.logger import Logger

from protocol.errors import MessageError
from protocol.json_form import event_from_json, event_to_json, record_from_json, record_to_json
from simulator.terminal import Terminal

log = Logger(namespace="simulator")

FORMAT = "simulated-terminal-state"
VERSION = 2  # 2 added log_epoch; a version 1 file is read with a new epoch (its log is one the gateway never saw named)


class StateError(Exception):
    """A state file that cannot be used: unreadable, corrupt, another program's or another terminal's."""


class FlashTerminal(Terminal):
    """A Terminal whose state is saved to ``path`` after every change, before it answers."""

    def __init__(self, terminal_id: int, secret, path: Path, **options):
        super().__init__(terminal_id, secret, **options)
        self.path = Path(path)
        self._answering = False
        self._saved_version = None

    # Every change of users or events logs an event; GET_USERS (which clears keypad changes the
    # gateway fetched) and acknowledgements do not, hence the three places that save.
    def respond(self, event, now):
        self._answering = True
        try:
            reply = super().respond(event, now)
        finally:
            self._answering = False
        self.save()  # one write per request, however many users it changed
        return reply

    def log_event(self, code, sub_code, user_id=""):
        event = super().log_event(code, sub_code, user_id)
        if not self._answering:
            self.save()
        return event

    def acknowledge(self, ack_through):
        super().acknowledge(ack_through)
        if not self._answering:
            self.save()

    def _version(self) -> tuple:
        return (self.next_event_id, self.acked_through, len(self.changed_locally))

    def save(self) -> None:
        """Write the state if it changed since the last write; a failed write is logged, not fatal."""
        version = self._version()
        if version == self._saved_version:
            return
        try:
            write_atomically(self.path, json.dumps(snapshot(self), ensure_ascii=False, separators=(",", ":")).encode())
        except OSError as exc:
            log.error("terminal {tid}: cannot write its state to {path}: {e}", tid=self.terminal_id, path=str(self.path), e=exc)
            return
        self._saved_version = version


def snapshot(terminal: Terminal) -> dict:
    return {
        "format": FORMAT,
        "version": VERSION,
        "terminal_id": terminal.terminal_id,
        "log_epoch": terminal.log_epoch,
        "next_event_id": terminal.next_event_id,
        "acked_through": terminal.acked_through,
        "overwritten": terminal.overwritten,
        "changed_locally": sorted(terminal.changed_locally),
        "events": [event_to_json(e) for e in terminal.log],
        "users": [record_to_json(terminal.users[u]) for u in sorted(terminal.users)],
    }


def open_terminal(path: str | Path, terminal_id: int, secret: str) -> FlashTerminal:
    """The terminal kept in ``path``, or a new one (saved there at once, so a path that cannot be
    written is found now, not after the first enrolment). StateError if the file is unusable."""
    path = Path(path)
    terminal = FlashTerminal(terminal_id, secret, path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raw = None
    except OSError as exc:
        raise StateError(f"cannot read state file {path}: {exc.strerror}") from None
    if raw is not None:
        restore(terminal, parse(raw, path))
    try:
        write_atomically(path, json.dumps(snapshot(terminal), ensure_ascii=False, separators=(",", ":")).encode())
    except OSError as exc:
        raise StateError(f"cannot write state file {path}: {exc.strerror}") from None
    terminal._saved_version = terminal._version()
    return terminal


def parse(raw: bytes, path: Path) -> dict:
    try:
        state = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise StateError(f"{path} is not a simulated terminal's state file (not JSON: {exc})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise StateError(f"{path} is not a simulated terminal's state file (no \"format\": \"{FORMAT}\")")
    if state.get("version") not in (1, VERSION):
        raise StateError(f"{path}: state file version {state.get('version')!r}; this simulator reads version {VERSION}")
    return state


def restore(terminal: Terminal, state: dict) -> None:
    path = getattr(terminal, "path", "state file")
    if state.get("terminal_id") != terminal.terminal_id:
        raise StateError(f"{path} belongs to terminal {state.get('terminal_id')}, not {terminal.terminal_id}: give each terminal its own file")
    try:
        counters = {k: state[k] for k in ("next_event_id", "acked_through", "overwritten")}
        if not all(type(v) is int and v >= 0 for v in counters.values()) or counters["next_event_id"] < 1:
            raise MessageError("event counters must be whole numbers, the next event id at least 1")
        users = [record_from_json(obj, f"users[{i}]") for i, obj in enumerate(_list(state, "users"))]
        events = [event_from_json(obj, f"events[{i}]") for i, obj in enumerate(_list(state, "events"))]
        changed = _list(state, "changed_locally")
        if not all(isinstance(u, str) for u in changed):
            raise MessageError("changed_locally must list user ids")
        ids = [e.event_id for e in events]
        if ids and ids != list(range(ids[0], ids[0] + len(ids))):
            raise MessageError("events must have consecutive ids")
        if ids and not (counters["acked_through"] < ids[0] and ids[-1] < counters["next_event_id"]):
            raise MessageError("events must lie between acked_through and next_event_id")
    except KeyError as exc:
        raise StateError(f"{path} is corrupt: {exc.args[0]} missing") from None
    except MessageError as exc:
        raise StateError(f"{path} is corrupt: {exc}") from None
    epoch = state.get("log_epoch", terminal.log_epoch)
    if epoch is not None and not (type(epoch) is int and 0 < epoch < 2**63):
        raise StateError(f"{path} is corrupt: log_epoch must be a whole number from 1 to 2**63-1, or null")
    terminal.log_epoch = epoch
    terminal.next_event_id = counters["next_event_id"]
    terminal.acked_through = counters["acked_through"]
    terminal.overwritten = counters["overwritten"]
    terminal.users = {r.user_id: r for r in users}
    terminal.log.extend(events)
    terminal.changed_locally = set(changed) & set(terminal.users)


def _list(state: dict, key: str) -> list:
    value = state[key]
    if not isinstance(value, list):
        raise MessageError(f"{key} must be a list")
    return value


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old file or the new, whole."""
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself must reach the disk
    finally:
        os.close(directory)
