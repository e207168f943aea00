"""The load-test harness on a small fleet: it passes when the fleet converged, and its checks catch
a terminal that silently lost a record, an event the server never stored, and a lost update.

Each run starts a real gateway process and two fleet worker processes for a few seconds.
"""

import base64
import json

import pytest
from sqlalchemy import create_engine

from protocol.records import UserRecordWire
from simulator.fleet import main as fleet_main
from simulator.people import People
from tools.loadtest import convergence
from tools.loadtest.harness import main

SMALL = ["--devices", "4", "--workers", "2", "--scenario", "enroll-storm", "--rate", "8", "--duration", "3",
         "--baseline-rows", "2000", "--sink-seconds", "0.3", "--drain-timeout", "30"]


def run_harness(folder, *extra) -> tuple[int, dict]:
    report_path = folder / "report.json"
    code = main([*SMALL, "--run-dir", str(folder / "run"), "--json", str(report_path), *extra])
    return code, json.loads(report_path.read_text())


@pytest.fixture(scope="module")
def converged(tmp_path_factory):
    folder = tmp_path_factory.mktemp("loadtest")
    return folder, *run_harness(folder)


def test_a_small_fleet_converges_and_the_report_has_every_key(converged):
    _, code, report = converged
    assert code == 0, report["problems"]
    assert report["ok"] and report["settled"]
    for key in ("devices", "duration_s", "events_per_s", "user_deliveries_per_s", "propagation_ms", "api_ms",
                "gateway_cpu_s", "gateway_cpu_us_per_delivery", "gateway_idle_cpu_us_per_terminal_s", "fleet_cpu_s",
                "fleet_cpu_us_per_delivery", "fleet_idle_cpu_us_per_terminal_s", "gateway_peak_rss_mb", "lost_events", "duplicate_events", "lost_updates",
                "diverged_terminals", "baselines", "ingest_vs_raw_insert", "deliveries_vs_bare_sink"):
        assert key in report
    assert report["devices"] == 4 and report["workers"] == 2
    assert report["enrolled"] > 0 and report["propagation_incomplete"] == 0
    assert set(report["propagation_ms"]) == {"p50", "p95", "p99", "max"}
    assert report["events_stored"] >= report["enrolled"] * 4  # an enrolment, and three applications elsewhere
    assert report["api_ms"] is not None, report.get("api_ms_reason")  # the gateway's API answered the probe
    assert report["api_ms"]["samples"] > 0 and report["api_ms"]["failures"] == 0
    assert report["gateway_idle_cpu_us_per_terminal_s"] is not None  # measured with the fleet connected, before the load
    assert report["fleet_idle_cpu_us_per_terminal_s"] is not None and report["fleet_cpu_us_per_delivery"] > 0
    # The fleet's memory in the gateway, not the API process's start: that alone is 20 MiB a terminal here.
    assert report["gateway_idle_rss_per_terminal_kb"] < 2048
    # SQLite works in the gateway's process: no server of its own to measure, and the report says so
    assert report["database_cpu_us_per_delivery"] is None and report["database_wal_bytes_per_delivery"] is None
    assert report["database_cpu_reason"].startswith("SQLite works inside the gateway")
    assert report["baselines"]["raw_insert"]["rows_per_s"] > 0 and report["baselines"]["bare_sink"]["frames_per_s"] > 0


def check_doctored(folder, doctor) -> convergence.Convergence:
    """The convergence check on the converged run's database, after ``doctor`` changed one dump."""
    dump_path = folder / "run" / "dump" / "terminal-2.json"
    original = dump_path.read_text()
    dump = json.loads(original)
    doctor(dump)
    dump_path.write_text(json.dumps(dump))
    engine = create_engine(f"sqlite:///{folder / 'run' / 'gateway.db'}")
    try:
        return convergence.check(engine, folder / "run" / "dump", [1, 2, 3, 4])
    finally:
        engine.dispose()
        dump_path.write_text(original)


def test_the_undoctored_dumps_pass_the_check(converged):
    assert check_doctored(converged[0], lambda dump: None).ok


def test_a_terminal_missing_a_user_is_diverged(converged):
    result = check_doctored(converged[0], lambda dump: dump["users"].pop(min(dump["users"])))
    assert (result.diverged_terminals, result.missing_deliveries, result.lost_events) == (1, 1, 0)
    assert not result.ok


def test_a_terminal_holding_another_version_is_diverged(converged):
    def doctor(dump):
        dump["users"][min(dump["users"])]["digest"] = "00" * 8

    result = check_doctored(converged[0], doctor)
    assert (result.diverged_terminals, result.stale_records) == (1, 1)


def test_an_event_the_server_never_stored_is_lost(converged):
    def doctor(dump):
        dump["last_event_id"] += 1

    result = check_doctored(converged[0], doctor)
    assert (result.lost_events, result.diverged_terminals) == (1, 0)


def test_a_change_made_at_a_terminal_that_the_server_lacks_is_a_lost_update(converged):
    def doctor(dump):
        record = People(99).person("never-pulled")
        dump["changed_here"]["never-pulled"] = base64.b64encode(UserRecordWire.build(record)).decode()

    result = check_doctored(converged[0], doctor)
    assert result.lost_updates == 1


def test_the_harness_fails_when_a_terminal_drops_a_record(tmp_path):
    code, report = run_harness(tmp_path, "--drop-one")
    assert code == 1 and not report["ok"]
    assert report["dropped_on_purpose"] is not None
    assert report["diverged_terminals"] == 1 and report["missing_deliveries"] == 1
    assert report["lost_events"] == 0 and report["lost_updates"] == 0


def test_a_fleet_pointed_at_no_host_port_says_so_before_starting_workers(capsys):
    assert fleet_main(["--gateway", "nowhere", "--devices", "2"]) == 2
    assert "--gateway: expected HOST:PORT" in capsys.readouterr().err


def test_a_capacity_search_runs_a_whole_load_test_per_rate(tmp_path):
    """Two short steps on four terminals, each a whole run with its own gateway; under a generous
    limit both hold, and the report names the top one as capacity, with its figures."""
    report_path = tmp_path / "capacity.json"
    code = main([*SMALL, "--duration", "2", "--find-capacity", "--ladder", "2,4", "--p99-limit-ms", "60000",
                 "--run-dir", str(tmp_path / "run"), "--json", str(report_path)])
    found = json.loads(report_path.read_text())
    assert code == 0
    assert [s["rate"] for s in found["steps"]] == [2, 4] and found["ladder_exhausted"]
    best = found["capacity"]
    assert best["rate"] == 4 and best["user_deliveries_per_s"] > 0
    assert best["gateway_cpu_us_per_delivery"] > 0 and best["api_idle_p99_ms"] > 0
    assert all(report["ok"] for report in found["reports"])


def test_a_step_missing_the_latency_limit_is_run_again_in_a_folder_of_its_own(tmp_path):
    """No propagation is within 0.001 ms: the one rate runs twice, each run on an empty database,
    and no capacity is found (exit 1)."""
    report_path = tmp_path / "capacity.json"
    code = main([*SMALL, "--duration", "2", "--find-capacity", "--ladder", "2", "--p99-limit-ms", "0.001",
                 "--run-dir", str(tmp_path / "run"), "--json", str(report_path)])
    found = json.loads(report_path.read_text())
    assert code == 1 and found["capacity"] is None
    assert [(s["rate"], s["held"]) for s in found["steps"]] == [(2, False), (2, False)]
    assert all(report["ok"] for report in found["reports"])  # converged both times: only latency failed
    assert (tmp_path / "run" / "rate-2").is_dir() and (tmp_path / "run" / "rate-2-run2").is_dir()


def test_each_capacity_step_on_a_database_server_gets_an_empty_database_of_its_own(postgres):
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from tools.loadtest.harness import step_database

    given = postgres.new_database()
    first = step_database(given, "rate-20")
    used = create_engine(first)
    with used.begin() as conn:
        conn.execute(text("CREATE TABLE left_by_the_first_run (x int)"))
    used.dispose()
    again = step_database(given, "rate-20")  # a repeated step starts empty too
    assert first == again and make_url(first).database == f"{make_url(given).database}_rate_20"
    engine = create_engine(again)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")).scalar() == 0
    finally:
        engine.dispose()
