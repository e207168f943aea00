"""The stored PUSH command queue (gateway/push/queue.py) on a real SQLite file and a real
PostgreSQL server: what a device owes comes back in the order it was queued, across gateway runs
whose command ids start lower, and per device; what is settled is gone, and so is what a terminal
forgotten owed. The lag the API shows counts each put or delete a device has not answered once."""

from gateway.http.queries import sync_state
from gateway.push.queue import StoredCommand, settle_commands, store_commands, stored_commands
from gateway.terminals import _forget_terminal
from protocol.zk.push.commands import PushCommand
from protocol.zk.push.server import Done, PushServer, PushTiming, Request, StrayResult

NOW_MS = 1_700_000_000_000


def put(command_id, group_id, user_id="5"):
    return StoredCommand(command_id, f"DATA UPDATE USERINFO PIN={user_id}", group_id, user_id, "enroll", b"d" * 8, b"w" * 8)


def test_a_device_gets_back_what_it_owes_in_queued_order_across_runs(db):
    db.run_now(store_commands, 7, [put(900, 900), put(901, 900)], NOW_MS)  # a run whose ids began at 900
    db.run_now(store_commands, 7, [put(12, 12, "6")], NOW_MS + 5)  # the next run's ids begin lower
    db.run_now(store_commands, 8, [put(900, 900, "7")], NOW_MS)  # another device: ids are per device
    assert [c.command_id for c in db.run_now(stored_commands, 7)] == [900, 901, 12]
    assert db.run_now(stored_commands, 8) == [put(900, 900, "7")]
    db.run_now(settle_commands, 7, [900, 12])
    assert db.run_now(stored_commands, 7) == [put(901, 900)]


def test_the_lag_counts_each_unanswered_put_once(db):
    db.run_now(store_commands, 7, [put(1, 1), put(2, 1), put(3, 3, "6")], NOW_MS)
    _, _, unanswered, _ = db.run_now(sync_state)
    assert unanswered == {7: 2}


def test_new_ids_skip_those_of_resumed_commands():
    server = PushServer("SN1", PushTiming(), first_id=10)
    assert server.new_ids(2) == [10, 11]  # reserved, not queued: the caller stores them first
    server.take([PushCommand(13, "DATA QUERY USERINFO")])
    assert server.new_ids(2) == [12, 14]
    server.take([PushCommand(13, "another text")])  # one waiting already stays as it is
    assert [c.text for c in server.commands_to_send(0.0)] == ["DATA QUERY USERINFO"]


def test_a_result_for_a_resumed_command_counts_before_it_is_sent_again():
    server = PushServer("SN1", PushTiming(), first_id=10)
    server.take([PushCommand(900, "DATA DELETE USERINFO PIN=5")], sent_before=True)  # an earlier run sent it
    server.take([PushCommand(901, "DATA DELETE USERINFO PIN=6")])  # stored just now, never sent
    results = b"ID=900&Return=0&CMD=DATA\nID=901&Return=0&CMD=DATA\n"
    event = server.receive(Request("POST", "/iclock/devicecmd", {"SN": "SN1"}, results), 0.0)
    assert [type(outcome) for outcome in event.outcomes] == [Done, StrayResult]


def test_a_terminal_forgotten_owes_nothing_when_it_is_admitted_again(db):
    db.run_now(store_commands, 7, [put(1, 1), put(2, 1)], NOW_MS)
    db.run_now(store_commands, 8, [put(1, 1)], NOW_MS)
    db.run_now(_forget_terminal, 7)
    assert db.run_now(stored_commands, 7) == []
    assert db.run_now(stored_commands, 8) == [put(1, 1)]
