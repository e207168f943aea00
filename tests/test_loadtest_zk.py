"""The ZK half of the load test: the convergence check of ZK device dumps (as the mapping
allows), the report's ZK figures, and a tiny ZK and mixed load test end to end against the
gateway's ZK driver (gateway/zk/)."""

import json

import pytest
from sqlalchemy import create_engine, insert

from gateway.store.schema import events, metadata, users
from protocol.records import Card, CardType, UserRecord, UserRecordWire
from tools.loadtest import convergence, report as reporting, zk_convergence
from tools.loadtest.harness import main

def zk_entry(name="Ana Lima", card=7, fingers=None):
    return dict(name=name, card=card, password="1234", privilege=0, group_id="1", fingers=fingers or {})


def zk_dump(terminal_id, users_held, changed_here=None, deleted_here=(), punches=0, fp_version="10"):
    return dict(terminal_id=terminal_id, kind="zk", port=4370, fp_version=fp_version, punches=punches, punched={},
                unacknowledged=0, users=users_held, changed_here=changed_here or {}, deleted_here=list(deleted_here))


def record(user_id, name="Ana Lima", cards=()):
    return UserRecord(user_id, name=name, cards=tuple(cards)).validate()


def test_a_name_is_the_servers_or_its_beginning_when_longer_than_24_bytes():
    assert zk_convergence.name_matches("Ana Lima", "Ana Lima")
    assert not zk_convergence.name_matches("Ana Lima", "Ana")  # it fits: it must be whole
    long = "Γιώργος Παπαδόπουλος"  # 39 bytes
    assert zk_convergence.name_matches(long, "Γιώργος Παπα")
    assert zk_convergence.name_matches(long, "Γιώργος")
    assert not zk_convergence.name_matches(long, "")
    assert not zk_convergence.name_matches(long, "Γιώργος Π.")


def test_a_device_converged_when_it_holds_the_servers_users_under_their_names():
    server = {"1-1": record("1-1"), "2-1": record("2-1", "Mei Tanaka")}
    result = convergence.Convergence()
    assert zk_convergence.holds_the_servers_users(zk_dump(3, {"1-1": zk_entry(), "2-1": zk_entry("Mei Tanaka")}), server, result)
    assert zk_convergence.holds_the_servers_users(zk_dump(3, {"2-1": zk_entry("Mei Tanaka")}, deleted_here=["1-1"]), server, result)
    assert (result.missing_deliveries, result.stale_records) == (0, 0)

    assert not zk_convergence.holds_the_servers_users(zk_dump(3, {"2-1": zk_entry("Mei Tanaka")}), server, result)
    assert result.missing_deliveries == 1
    renamed = zk_dump(3, {"1-1": zk_entry("Ana"), "2-1": zk_entry("Mei Tanaka"), "9-9": zk_entry()})
    assert not zk_convergence.holds_the_servers_users(renamed, server, result)
    assert result.stale_records == 2
    assert any("holds user 1-1 as 'Ana', the server as 'Ana Lima'" in e for e in result.examples)


def test_a_change_at_a_device_is_lost_only_when_the_server_kept_a_vacancy_it_filled():
    card = Card(CardType.CSN, b"\x01\x02\x03\x04")
    server = {"3-1": record("3-1", "Server Name", [card]), "3-2": record("3-2", ""), "3-3": record("3-3", "X")}
    dump = zk_dump(3, {}, changed_here={
        "3-1": zk_entry("Keypad Name", 99),  # the server kept its own name and card: absorbed
        "3-2": zk_entry("Filled", 0),  # the server's name stayed vacant: lost
        "3-3": zk_entry("X", 5),  # the server has no card: lost
        "3-4": zk_entry(),  # the server never heard of it: lost
    })
    result = convergence.Convergence()
    zk_convergence.check_changes_made_here(dump, server, result)
    assert result.lost_updates == 3
    assert [e.split(": ", 1)[1] for e in result.examples] == [
        "its change of user 3-2 did not reach the server (the server's name is vacant)",
        "its change of user 3-3 did not reach the server (the server holds no card)",
        "its change of user 3-4 did not reach the server (the server lacks the user)",
    ]


def test_fingers_enrolled_at_one_device_must_reach_the_others_of_its_algorithm():
    origin = zk_dump(1, {"1-1": zk_entry(fingers={"3": "aa"})}, changed_here={"1-1": zk_entry(fingers={"3": "aa"})})
    with_finger = zk_dump(2, {"1-1": zk_entry(fingers={"3": "aa"})})
    without = zk_dump(3, {"1-1": zk_entry()})
    other_algorithm = zk_dump(4, {"1-1": zk_entry()}, fp_version="9")
    result = convergence.Convergence()
    assert zk_convergence.devices_missing_fingers([origin, with_finger, without, other_algorithm], result) == {3}
    assert result.missing_deliveries == 1


def test_the_whole_check_counts_a_zk_devices_punches_against_its_stored_events(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'server.db'}")
    metadata.create_all(engine)
    server = record("1-1")
    with engine.begin() as conn:
        conn.execute(insert(users), [dict(user_id="1-1", name=server.name, record=UserRecordWire.build(server), change_seq=1,
                                          updated_ms=0)])
        conn.execute(insert(events), [dict(terminal_id=5, terminal_event_id=n, type="VERIFY_SUCCESS", occurred_ms=0, recorded_ms=0)
                                      for n in (1, 2)])
    dumps = tmp_path / "dump"
    dumps.mkdir()
    for terminal_id, punches in ((5, 2), (6, 1)):
        (dumps / f"terminal-{terminal_id}.json").write_text(json.dumps(zk_dump(terminal_id, {"1-1": zk_entry()}, punches=punches)))
    result = convergence.check(engine, dumps, [5, 6])
    assert (result.events_produced, result.events_stored, result.lost_events, result.unexpected_events) == (3, 2, 1, 0)
    assert result.diverged_terminals == 0 and not result.ok
    assert "terminal 6: 1 of its 1 events are not stored" in result.examples
    engine.dispose()


def test_the_report_table_shows_the_zk_figures():
    report = json.loads(json.dumps(dict(
        devices=3, kind="zk", workers=1, scenario="enroll-storm", seed=0, rate=2.0, database="sqlite", duration_s=3.0,
        settle_s=1.0, settled=True, events_stored=10, events_per_s=3.0, user_deliveries=6, user_deliveries_per_s=2.0,
        enrolled=3, propagation_ms=None, propagation_incomplete=0, api_ms=None, api_ms_reason="none", gateway_cpu_s=1.0,
        fleet_cpu_s=1.0, gateway_peak_rss_mb=50.0, gateway_idle_rss_per_terminal_kb=1.0, lost_events=0, duplicate_events=0,
        unexpected_events=0, lost_updates=0, diverged_terminals=0, problems=[], ingest_vs_raw_insert=None,
        deliveries_vs_bare_sink=None, baselines=dict(raw_insert=dict(rows_per_s=1, one_commit_per_row_rows_per_s=1),
                                                     bare_sink=dict(frames_per_s=1, frame_bytes=1)),
        zk=dict(devices=3, poll_s=2.0, comm_key=0, enrolled=3, propagation_ms=dict(p50=2100.0, p95=2500.0, p99=2900.0, max=2900.0),
                propagation_incomplete=0, idle=dict(seconds=10.0, cycles=5.0, gateway_cpu_ms_per_device_per_cycle=0.412,
                                                    bytes_per_device_per_cycle=212.0, requests_per_device_per_cycle=1.0,
                                                    writes=0, deliveries=0)),
    )))
    table = reporting.table(report)
    assert "devices / workers" in table and "3 zk / 1" in table
    lines = {line.split("  ")[1] if line.startswith("  ") else line.split("  ")[0]: line.rsplit("  ", 1)[1]
             for line in table.splitlines() if "  " in line.strip()}
    assert lines["to every steady p50/p99"] == "2,100 ms / 2,900 ms"
    assert lines["idle poll cycle, per device"] == "0.412 ms gateway CPU, 212 B, 1 requests"
    assert lines["ZK devices, poll_s"] == "3, 2 s"


# -- end to end, with the gateway's ZK driver ---------------------------------------------------

TINY = ["--devices", "3", "--workers", "1", "--scenario", "mixed", "--rate", "4", "--duration", "3", "--poll-s", "0.5",
        "--idle-cycles", "4", "--baseline-rows", "2000", "--sink-seconds", "0.3", "--drain-timeout", "60"]


@pytest.fixture(scope="module")
def zk_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("loadtest-zk")
    code = main([*TINY, "--kind", "zk", "--zk-comm-key", "4321", "--run-dir", str(folder / "run"), "--json", str(folder / "r.json")])
    return code, json.loads((folder / "r.json").read_text())


def test_a_tiny_zk_load_test_converges_and_reports_the_polling_cost(zk_run):
    code, report = zk_run
    assert code == 0, report["problems"]
    assert report["ok"] and report["kind"] == "zk"
    zk = report["zk"]
    assert zk["devices"] == 3 and zk["enrolled"] > 0 and zk["propagation_incomplete"] == 0
    assert set(zk["propagation_ms"]) == {"p50", "p95", "p99", "max"}
    idle = zk["idle"]
    assert idle["cycles"] >= 3 and idle["requests_per_device_per_cycle"] > 0 and idle["bytes_per_device_per_cycle"] > 0
    assert idle["writes"] == 0 and idle["deliveries"] == 0  # nothing changed: nothing written
    assert report["events_stored"] >= 1 and report["lost_events"] == 0  # punches became events, each once


def test_a_tiny_mixed_load_test_carries_users_between_native_terminals_and_zk_devices(tmp_path):
    code = main([*TINY, "--devices", "4", "--kind", "mixed", "--run-dir", str(tmp_path / "run"), "--json", str(tmp_path / "r.json")])
    report = json.loads((tmp_path / "r.json").read_text())
    assert code == 0, report["problems"]
    assert report["zk"]["devices"] == 2 and report["propagation_incomplete"] == 0 and report["diverged_terminals"] == 0


def test_a_zk_device_that_silently_loses_a_user_fails_the_run(tmp_path):
    code = main([*TINY, "--kind", "zk", "--scenario", "enroll-storm", "--drop-one",
                 "--run-dir", str(tmp_path / "run"), "--json", str(tmp_path / "r.json")])
    report = json.loads((tmp_path / "r.json").read_text())
    assert code == 1 and report["diverged_terminals"] == 1 and report["dropped_on_purpose"][0] == 1
