"""The reconciler's decisions as pure functions (gateway/sync/reconcile.py, ``compare`` and
``decide``): what a listing and the server's users say, then what the keypad's history changes."""

from types import SimpleNamespace

from gateway.sync.reconcile import (CHANGED_AT_KEYPAD, DELETED_AT_KEYPAD, NOT_TARGETED, ONLY_ON_TERMINAL, Comparison, compare,
                                    decide)

EVERYONE = lambda groups: True  # noqa: E731 - a sync mode that sends every user
DELETED, EDITED = "DELETE_SUCCESS", "UPDATE_SUCCESS"


TERMINAL = 7


def row(digest: bytes | None, change_seq: int = 1, groups=frozenset(), holder=None):
    return SimpleNamespace(digest=digest, change_seq=change_seq, access_groups=groups, holder_terminal=holder)


def test_a_targeted_user_held_in_another_version_differs_and_one_not_held_is_missing():
    found = compare({"a": row(b"A"), "b": row(b"B"), "c": row(b"C")}, {"a": b"old", "c": b"C"}, set(), 5, TERMINAL, EVERYONE, pulls=True)
    assert (found.differing, found.missing, found.compared) == (["a"], ["b"], 3)


def test_what_the_terminal_holds_and_should_not():
    server = {"gone": row(None), "other": row(b"O", groups=frozenset({9}))}
    held = {"gone": b"x", "other": b"O", "new": b"N"}
    targets = lambda groups: 9 not in groups  # noqa: E731
    assert compare(server, held, set(), 5, TERMINAL, targets, pulls=True) == Comparison(3, [], [], ["gone"], ["new"], {"other": NOT_TARGETED})
    assert compare(server, held, set(), 5, TERMINAL, targets, pulls=False).differences == {"other": NOT_TARGETED, "new": ONLY_ON_TERMINAL}


def test_a_change_being_pulled_or_delivered_is_not_judged():
    found = compare({"owed": row(b"A"), "later": row(b"B", change_seq=9)}, {}, {"owed"}, 5, TERMINAL, EVERYONE, pulls=True)
    assert (found.missing, found.compared) == ([], 0)


def test_a_change_not_meant_for_this_terminal_is_judged_whatever_its_cursor():
    """Mode specific: a user moved to another group and then deleted must not stay on this door
    because the terminal's cursor, never woken for those changes, is behind them."""
    server = {"moved": row(None, change_seq=51, groups=frozenset({2})), "ours": row(b"O", change_seq=52, groups=frozenset({1}))}
    group_1 = lambda groups: 1 in groups  # noqa: E731
    found = compare(server, {"moved": b"M"}, set(), 40, TERMINAL, group_1, pulls=False)
    assert (found.delete, found.missing, found.compared) == (["moved"], [], 1)  # "ours" is the pusher's to deliver


def test_a_version_taken_whole_from_this_terminal_is_judged_before_the_cursor_passes_it():
    """The pusher never sends a terminal its own copy back: waiting for it would leave a wiped device without it."""
    server = {"own": row(b"A", change_seq=9, holder=TERMINAL), "other": row(b"B", change_seq=9, holder=8)}
    found = compare(server, {}, set(), 5, TERMINAL, EVERYONE, pulls=True)
    assert (found.missing, found.compared) == (["own"], 1)


def test_the_keypad_decides_what_is_repaired():
    first = Comparison(differing=["edited", "pushed", "alike"], missing=["deleted", "lost"], delete=["kept", "dropped"])
    keypad = {"edited": EDITED, "deleted": DELETED, "kept": EDITED, "dropped": DELETED}
    push, delete, pull, left = decide(first, {"alike"}, keypad, pulls=True)
    assert (push, delete, pull, left) == (["lost", "pushed"], ["dropped"], ["edited", "kept"], {"deleted": DELETED_AT_KEYPAD})
    push, delete, pull, left = decide(first, {"alike"}, keypad, pulls=False)
    assert pull == [] and left == {"deleted": DELETED_AT_KEYPAD, "edited": CHANGED_AT_KEYPAD, "kept": ONLY_ON_TERMINAL}
