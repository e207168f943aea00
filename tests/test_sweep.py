"""The once-a-second sweep (unit: the sweep's walk over stand-ins for the registry, metrics and
pusher): it tells each terminal's lag and kicks those a round is due for; a terminal caught up
and told so costs it nothing more."""

from types import SimpleNamespace

from gateway.metrics import Metrics
from gateway.process.service import Gateway
from gateway.sync.due import RecentChanges
from gateway.sync.syncmode import SyncMode
from gateway.terminals import Terminal


class Counted(RecentChanges):
    """The newest changes, counting the terminals judged against them."""

    judged = 0

    def behind(self, cursor, terminal_groups, mode):
        self.judged += 1
        return super().behind(cursor, terminal_groups, mode)


def sweeping(cursors: dict[int, int]):
    terminals = [Terminal(t, cursor=c) for t, c in cursors.items()]
    kicked = []
    gateway = SimpleNamespace(registry=SimpleNamespace(connected=lambda: list(terminals)), settings=SimpleNamespace(mode=SyncMode.ALL),
                              metrics=Metrics(), pusher=SimpleNamespace(sweep=kicked.append))
    return gateway, kicked


def swept(gateway, owed: dict | None = None) -> Counted:
    recent = Counted(5, [1, 2, 3, 4, 5], [frozenset()] * 5, whole=True)
    Gateway._swept(gateway, (5, owed or {}, {}, recent))
    return recent


def lag(gateway, terminal_id: int) -> float:
    return gateway.metrics.sync_lag.labels(str(terminal_id))._value.get()


def test_each_terminal_is_told_its_lag_and_those_behind_are_kicked():
    gateway, kicked = sweeping({1: 5, 2: 3, 3: 5})
    swept(gateway, owed={3: 1})
    assert kicked == [2]
    assert [lag(gateway, t) for t in (1, 2, 3)] == [0, 2, 1]


def test_a_terminal_caught_up_and_told_so_is_not_judged_again_until_it_lags():
    gateway, kicked = sweeping({1: 5, 2: 5})
    assert swept(gateway).judged == 4  # the first time each is told its 0 (behind, then whether a round is due)
    assert swept(gateway).judged == 0
    assert swept(gateway, owed={2: 1}).judged == 2 and lag(gateway, 2) == 1  # a pull owed is lag too
    assert swept(gateway).judged == 2 and lag(gateway, 2) == 0  # told its 0 once more
    assert swept(gateway).judged == 0 and kicked == []
