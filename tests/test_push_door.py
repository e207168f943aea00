"""PushDoor (gateway/push/door.py): PUSH devices admitted by serial number and address, under
each admission policy, with the registry the gateway uses (its database a recording fake)."""

import pytest
from prometheus_client import CollectorRegistry
from twisted.internet import defer, task

from gateway.push.door import PUSH, PushDoor
from gateway.push.settings import PushDeviceEntry, terminal_id_of
from gateway.sync.connection import Refused, TerminalInfo
from gateway.terminals import ADMITTED, PENDING, Terminal, TerminalRegistry


class Db:
    def __init__(self):
        self.writes = 0

    def write(self, work, *args):
        self.writes += 1
        return defer.succeed(None)


def door(policy="allowlist", devices=(), terminals=()):
    registry = TerminalRegistry(db=Db(), clock=None, policy=policy, default_secret="lab" if policy == "open" else None, configured=[])
    for term in terminals:
        registry.terminals[term.terminal_id] = term
    return PushDoor(registry, list(devices), CollectorRegistry()), registry


def refused(found):
    return None if found is None else (found.status, found.reason)


def test_a_listed_device_from_its_networks_only():
    entry = PushDeviceEntry(sn="A1", id=5, networks=["10.1.0.0/16"])
    d, _ = door(devices=[entry], terminals=[Terminal(5, kind=PUSH)])
    assert refused(d.admit("A1", "10.1.2.3", None)) is None
    assert refused(d.admit("A1", "10.2.0.1", None)) == (403, "network")
    assert refused(d.admit("A1", "10.1.2.4", "10.1.2.3")) == (403, "another_address")
    assert d.refused.labels("network")._value.get() == 1


def test_unknown_serials_by_policy():
    d, registry = door("allowlist")
    assert refused(d.admit("NEW1", "10.0.0.9", None)) == (403, "unknown")
    assert registry.terminals == {}
    d, registry = door("pending")
    assert refused(d.admit("NEW1", "10.0.0.9", None)) == (403, "pending")
    term = registry.terminals[terminal_id_of("NEW1")]
    assert (term.admission, term.kind, term.link, term.model) == (PENDING, PUSH, "push 10.0.0.9", "PUSH device NEW1")
    assert refused(d.admit("NEW1", "10.0.0.9", None)) == (403, "pending")  # recorded once, still waiting
    d, registry = door("open")
    assert refused(d.admit("NEW1", "10.0.0.9", None)) is None
    assert (registry.terminals[terminal_id_of("NEW1")].admission, registry.terminals[terminal_id_of("NEW1")].kind) == (ADMITTED, PUSH)


def test_an_id_of_another_kind_of_terminal_is_refused_and_a_bad_serial_is_400():
    d, _ = door(terminals=[Terminal(terminal_id_of("X9"))])  # a native terminal with that id
    assert refused(d.admit("X9", "10.0.0.9", None)) == (403, "id_taken")
    assert refused(d.admit("", "10.0.0.9", None)) == (400, "bad_serial")
    assert refused(d.admit("A\nB", "10.0.0.9", None)) == (400, "bad_serial")


def test_made_up_serials_by_the_thousand_stop_being_recorded(monkeypatch):
    monkeypatch.setattr("gateway.push.door.MAX_PENDING", 3)
    d, registry = door("pending")
    for n in range(5):
        d.admit(f"FAKE{n}", "10.0.0.9", None)
    assert len(registry.terminals) == 3
    assert refused(d.admit("FAKE9", "10.0.0.9", None)) == (403, "unknown")


class Immediate:
    """The real database, each write committed at once on the calling thread."""

    def __init__(self, db):
        self.run_now = db.run_now

    def write(self, work, *args):
        return defer.succeed(self.run_now(work, *args))


def test_a_pending_push_device_is_stored_as_one_and_known_as_one_after_a_restart(db):
    store = Immediate(db)
    d = PushDoor(TerminalRegistry(store, task.Clock(), "pending", None, []), [], CollectorRegistry())
    assert refused(d.admit("NEW1", "10.0.0.9", None)) == (403, "pending")
    restarted = TerminalRegistry(store, task.Clock(), "pending", None, [])
    restarted.load()
    terminal_id = terminal_id_of("NEW1")
    assert (restarted.terminals[terminal_id].kind, restarted.terminals[terminal_id].admission) == (PUSH, PENDING)
    restarted.set_admission(terminal_id, ADMITTED)  # no secret: a PUSH device proves none
    with pytest.raises(Refused, match="over HTTP"):  # a native terminal claiming its id
        restarted.secret_for(terminal_id, TerminalInfo("M"), "tcp 10.0.0.7")
    assert refused(PushDoor(restarted, [], CollectorRegistry()).admit("NEW1", "10.0.0.9", None)) is None
