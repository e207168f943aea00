"""A change wakes only the terminals it is meant for (unit): in sync mode specific those serving
one of its user's groups, the others no feed read, no round, no cursor write; a terminal left
behind later gets what is meant for it and nothing else; the sweep's window counts as lag only
the changes meant for a terminal."""

from types import SimpleNamespace

from twisted.internet import task

from gateway.metrics import Metrics
from gateway.store.notices import ANY, owed_payload
from gateway.sync.connection import UserResult
from gateway.sync.due import RECENT_CHANGES, RecentChanges, heard_groups
from gateway.sync.pusher import FeedEntry, FeedPage, Pusher
from gateway.sync.syncmode import SyncMode
from gateway.terminals import Terminal
from protocol.messages import UserStatus
from protocol.records import UserRecord, UserRecordWire
from test_pusher import StalledTerminal, WritingDatabase


def entry(user_id: str, seq: int, *groups: int) -> FeedEntry:
    return FeedEntry(user_id, seq, UserRecordWire.build(UserRecord(user_id, access_groups=groups)), frozenset(groups), None)


def fleet(mode: SyncMode):
    """Terminals 1 (group 1), 2 (group 2) and 3 (groups 1 and 2), each at a cursor of its own, so
    that each round's feed read is its own."""
    db, clock = WritingDatabase(), task.Clock()
    terms = {t: Terminal(t, connection=StalledTerminal(), access_groups=groups, cursor=10 * t)
             for t, groups in ((1, frozenset({1})), (2, frozenset({2})), (3, frozenset({1, 2})))}
    registry = SimpleNamespace(terminals=terms, connected=lambda: list(terms.values()))
    pusher = Pusher(db, registry, SimpleNamespace(mode=mode), clock, Metrics())
    return db, clock, terms, pusher


def read_cursors(db) -> list[int]:
    return sorted(args[0] for args, _ in db.reads)


def answer(db, cursor: int, page: FeedPage) -> None:
    next(d for args, d in db.reads if args[0] == cursor).callback(page)


def test_in_specific_mode_a_change_of_group_1_wakes_only_the_terminals_serving_group_1():
    db, clock, terms, pusher = fleet(SyncMode.SPECIFIC)
    pusher.wake(frozenset({1}))
    assert read_cursors(db) == [10, 30]  # terminals 1 and 3 read the feed; 2 does not
    for cursor in (10, 30):
        answer(db, cursor, FeedPage([entry("u1", 40, 1)]))
    for t in (1, 3):
        ((users, d),) = terms[t].connection.puts
        assert users == ["u1"]
        d.callback([UserResult("u1", UserStatus.OK)])
    clock.advance(60)
    assert terms[2].connection.puts == [] and len(db.reads) == 2  # no round for terminal 2, not even a later one
    assert sorted(t for (moves,) in db.writes for t, *_ in moves) == [1, 3]  # and no cursor write
    assert (terms[1].cursor, terms[2].cursor, terms[3].cursor) == (40, 20, 40)


def test_a_terminal_left_behind_later_gets_what_is_meant_for_it_and_nothing_else():
    db, clock, terms, pusher = fleet(SyncMode.SPECIFIC)
    pusher.wake(frozenset({1}))  # u1, of group 1, passes terminal 2 by
    db.reads.clear()
    pusher.wake(frozenset({2}))  # then u2, of group 2
    assert 20 in read_cursors(db)  # terminal 2 reads from the cursor it was left at
    answer(db, 20, FeedPage([entry("u1", 40, 1), entry("u2", 41, 2)]))
    ((users, d),) = terms[2].connection.puts
    assert users == ["u2"]  # u1 is passed over, not sent
    d.callback([UserResult("u2", UserStatus.OK)])
    assert terms[2].cursor == 41  # past both


def test_a_group_less_change_in_specific_mode_wakes_nobody():
    db, _, _, pusher = fleet(SyncMode.SPECIFIC)
    pusher.wake(frozenset())
    assert db.reads == []


def test_in_mode_all_a_change_wakes_every_terminal_whatever_its_groups():
    for mode in (SyncMode.ALL, SyncMode.ALL_WITH_DEVICE_UPDATES):
        db, _, _, pusher = fleet(mode)
        pusher.wake(frozenset({1}))
        assert read_cursors(db) == [10, 20, 30]


def test_a_wake_naming_no_groups_wakes_every_terminal():
    db, _, _, pusher = fleet(SyncMode.SPECIFIC)
    pusher.wake()  # a mode change, a merge, a listener back: any user may have changed
    assert read_cursors(db) == [10, 20, 30]


def recent(keys_groups, last_seq=None, whole=True) -> RecentChanges:
    keys = [k for k, _ in keys_groups]
    return RecentChanges(last_seq if last_seq is not None else keys[-1], keys, [frozenset(g) for _, g in keys_groups], whole)


def test_only_the_changes_meant_for_a_terminal_count_as_its_lag_in_specific_mode():
    feed = recent([(5, {1}), (6, {2}), (7, {1, 2}), (9, {3})])
    assert feed.behind(4, frozenset({1}), SyncMode.SPECIFIC) == 2  # 5 and 7
    assert feed.behind(7, frozenset({1}), SyncMode.SPECIFIC) == 0  # 9 is not for it: not behind
    assert not feed.round_due(7, frozenset({1}), SyncMode.SPECIFIC)  # and the sweep leaves it
    assert feed.round_due(6, frozenset({1}), SyncMode.SPECIFIC)
    assert feed.behind(4, frozenset({1}), SyncMode.ALL) == 5  # every change after the cursor


def test_a_cursor_older_than_the_window_counts_every_change_after_it_and_one_half_a_window_behind_gets_a_round():
    keys = list(range(1000, 1000 + RECENT_CHANGES))
    feed = recent([(k, {2}) for k in keys], whole=False)
    assert feed.behind(10, frozenset({1}), SyncMode.SPECIFIC) == keys[-1] - 10  # what lies before is unknown: an upper bound
    assert feed.behind(keys[0], frozenset({1}), SyncMode.SPECIFIC) == 0
    assert feed.round_due(keys[0], frozenset({1}), SyncMode.SPECIFIC)  # moved on before the window leaves it
    assert not feed.round_due(keys[RECENT_CHANGES // 2], frozenset({1}), SyncMode.SPECIFIC)


def test_a_change_notice_names_the_groups_of_the_users_changed_or_any_when_they_would_not_fit():
    assert heard_groups(owed_payload({"1", "12", "3"})) == frozenset({1, 3, 12})
    assert heard_groups(owed_payload(set())) == frozenset()
    assert owed_payload({str(g) for g in range(4000)}) == ANY
    assert heard_groups(ANY) is None
