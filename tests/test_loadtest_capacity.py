"""The capacity search's rules, on made-up step reports: no gateway, no fleet.

A step holds its rate when its run converged, every enrolment arrived and p99 propagation stayed
within the limit; the search climbs the ladder and stops at the first step that does not hold.
"""

import pytest

from tools.loadtest import capacity, side_by_side
from tools.loadtest.harness import build_parser


def report(p99=500.0, ok=True, incomplete=0, **extra) -> dict:
    return dict(ok=ok, settled=True, propagation_incomplete=incomplete, propagation_ms=None if p99 is None else dict(p99=p99),
                user_deliveries_per_s=1000.0, events_per_s=1000.0, gateway_cpu_us_per_delivery=150.0,
                api_ms=dict(p99=20.0, idle_p99=10.0), gateway_cpu_s=3.0, fleet_cpu_s=4.0, duration_s=15,
                lost_events=0, duplicate_events=0, lost_updates=0, diverged_terminals=0, reconcile_repaired=0) | extra


def test_a_converged_step_within_the_limit_holds():
    assert capacity.step_verdict(report(p99=1999)) is None


def test_a_step_past_the_p99_limit_does_not_hold():
    assert capacity.step_verdict(report(p99=2500)) == "p99 propagation 2,500 ms > 2,000 ms"
    assert capacity.step_verdict(report(p99=2500), p99_limit_ms=3000) is None


def test_a_step_that_lost_anything_does_not_hold_whatever_its_latency():
    why = capacity.step_verdict(report(p99=10, ok=False, lost_events=3))
    assert why == "not converged: lost_events 3"


def test_a_step_whose_enrolments_never_all_arrived_does_not_hold():
    assert capacity.step_verdict(report(incomplete=2)) == "2 enrolments never reached every steady terminal"
    assert capacity.step_verdict(report(p99=None)) == "no enrolment completed: no propagation to judge"


def test_the_search_climbs_until_the_first_step_not_held():
    p99_by_rate = {10: 300.0, 20: 900.0, 40: 2600.0, 80: 100.0}
    offered = []

    def run_step(rate):
        offered.append(rate)
        return report(p99=p99_by_rate[rate])

    steps = capacity.find_capacity((10, 20, 40, 80), run_step)
    assert offered == [10, 20, 40, 40]  # 40 missed the limit twice; 80 never offered
    found = capacity.capacity_report(steps, capacity.P99_LIMIT_MS)
    assert found["capacity_rate"] == 20 and not found["ladder_exhausted"]
    assert found["stopped_by"]["rate"] == 40 and "p99" in found["stopped_by"]["why_not"]
    assert [s["held"] for s in found["steps"]] == [True, True, False, False]
    assert "capacity: 20/s held" in capacity.capacity_table(found)


def test_the_whole_ladder_runs_every_rate_once_held_or_not():
    p99_by_rate = {10: 300.0, 20: 2600.0, 40: 900.0}
    offered = []

    def run_step(rate):
        offered.append(rate)
        return report(p99=p99_by_rate[rate], gateway_idle_cpu_us_per_terminal_s=55.0)

    steps = capacity.find_capacity((10, 20, 40), run_step, whole=True)
    assert offered == [10, 20, 40]  # 20 missed the limit: neither run again nor the end of it
    assert [s.held for s in steps] == [True, False, True]
    assert "55.0" in capacity.capacity_table(capacity.capacity_report(steps, capacity.P99_LIMIT_MS))  # idle CPU per terminal


def test_a_step_missing_the_latency_limit_once_is_run_again_and_may_hold():
    p99s = iter([300.0, 2600.0, 900.0, 2500.0, 2700.0])
    steps = capacity.find_capacity((10, 20, 30), lambda rate: report(p99=next(p99s)))
    assert [(s.rate, s.held) for s in steps] == [(10, True), (20, False), (20, True), (30, False), (30, False)]
    assert capacity.capacity_report(steps, capacity.P99_LIMIT_MS)["capacity_rate"] == 20


def test_a_step_that_lost_anything_stops_the_search_at_once():
    offered = []

    def run_step(rate):
        offered.append(rate)
        return report(ok=rate < 20, lost_events=1 if rate >= 20 else 0)

    capacity.find_capacity((10, 20, 30), run_step)
    assert offered == [10, 20]  # no second chance for a loss


def test_a_gateway_holding_the_whole_ladder_says_capacity_is_higher():
    found = capacity.capacity_report(capacity.find_capacity((5, 10), lambda rate: report()), capacity.P99_LIMIT_MS)
    assert found["capacity_rate"] == 10 and found["ladder_exhausted"] and found["stopped_by"] is None
    assert "it holds more" in capacity.capacity_table(found)


def test_no_rate_held_gives_no_capacity():
    found = capacity.capacity_report(capacity.find_capacity((5, 10), lambda rate: report(p99=9000)), capacity.P99_LIMIT_MS)
    assert found["capacity"] is None and len(found["steps"]) == 2  # the first rate, twice
    assert "not even the first rate held" in capacity.capacity_table(found)


@pytest.mark.parametrize("text", ["", "10,x", "20,10", "0,5", "5,5"])
def test_a_bad_ladder_is_one_clear_line(text, capsys):
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(["--devices", "2", "--find-capacity", "--ladder", text])
    assert stop.value.code == 2
    assert "argument --ladder: expected" in capsys.readouterr().err


def test_a_ladder_is_rates_rising():
    assert capacity.parse_ladder("5, 10,20.5") == (5.0, 10.0, 20.5)


def test_sqlite_and_postgresql_searches_print_side_by_side_with_postgresqls_share():
    def search(held_p99: dict, **extra) -> dict:
        steps = capacity.find_capacity(tuple(held_p99), lambda rate: report(p99=held_p99[rate], **extra))
        return capacity.capacity_report(steps, capacity.P99_LIMIT_MS)

    sqlite = search({10: 300.0, 20: 900.0, 40: 2600.0})
    postgresql = search({10: 400.0, 20: 2600.0}, lost_events=0, duplicate_events=1)
    lines = side_by_side.table(sqlite, postgresql).splitlines()
    assert lines[1].split() == ["rate", "held", "/s", "20", "10", "0.50"]
    assert lines[-1].split() == ["lost,", "all", "steps", "0", "3"]  # three steps, one duplicate each
    assert side_by_side.table(sqlite, None, "no PostgreSQL server installed").splitlines()[-1] == (
        "PostgreSQL not measured: no PostgreSQL server installed")


def test_side_by_side_gives_the_database_servers_cpu_per_delivery_or_why_not():
    def search(**extra) -> dict:
        return capacity.capacity_report(capacity.find_capacity((10,), lambda rate: report(**extra)), capacity.P99_LIMIT_MS)

    sqlite = search(database_cpu_reason="SQLite works inside the gateway's process: its CPU is the gateway's")
    postgresql = search(database_cpu_us_per_delivery=60.0, database_wal_bytes_per_delivery=900.0)
    lines = side_by_side.table(sqlite, postgresql).splitlines()
    assert [line.split()[-3:] for line in lines if line.startswith(("database CPU us", "WAL bytes"))] == [["-", "60", "-"], ["-", "900", "-"]]
    assert lines[-1] == "database CPU: SQLite works inside the gateway's process: its CPU is the gateway's"
