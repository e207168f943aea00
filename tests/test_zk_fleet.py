"""`simulator fleet --kind zk|mixed`: emulated ZK devices in fleet workers, their ports, keypad
scenarios, settling on what the gateway has read, and their dumps. The gateway's ZK driver is
not needed: a naive stand-in (tests/zk_standin.py) copies users between the devices."""

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from protocol.zk.bodies import ATTENDANCE, USERS, buffer_request
from protocol.zk.commands import Command, EventFlag
from protocol.zk.packet import Packet
from processes import Process
from simulator.fleet import Fleet, FleetError, FleetSpec, describe_ports, propagation_figures
from simulator.gateway_config import fleet_config
from simulator.zk.device import ZkDevice
from simulator.zk.station import ZkStation, fit
from tools.loadtest.gateway_process import GatewayProcess
from zk_standin import NaiveZkSync

BIN = Path(sys.executable).parent


def test_kinds_split_the_ids():
    assert FleetSpec(devices=5, first_id=10, kind="mixed").native_ids == [10, 11, 12]
    assert FleetSpec(devices=5, first_id=10, kind="mixed").zk_ids == [13, 14]
    assert FleetSpec(devices=3, kind="zk").zk_ids == [1, 2, 3] and FleetSpec(devices=3, kind="zk").native_ids == []
    assert FleetSpec(devices=3).zk_ids == []


def test_the_gateway_configuration_for_a_fleet():
    mixed = tomllib.loads(fleet_config(secret='s"1', dial_in=True, zk={5: 4001, 4: 4000}, comm_key=12, poll_s=2))
    assert mixed["admission"] == "open" and mixed["default_secret"] == 's"1'
    assert mixed["zk"] == [
        dict(id=4, host="127.0.0.1", port=4000, comm_key=12, name="zk-4", poll_s=2.0),
        dict(id=5, host="127.0.0.1", port=4001, comm_key=12, name="zk-5", poll_s=2.0),
    ]
    dialled = tomllib.loads(fleet_config(secret="s", listening={1: 5000}, zk={2: 5001}))
    assert dialled["admission"] == "allowlist"
    assert dialled["terminals"] == [dict(id=1, secret="s", dial="127.0.0.1:5000")]
    assert "poll_s" not in dialled["zk"][0]


def test_ports_are_described_as_a_range_when_consecutive():
    assert describe_ports({1: 4000, 2: 4001, 3: 4002}) == "4000-4002"
    assert describe_ports({1: 4000}) == "4000"
    assert describe_ports({2: 7, 1: 9}) == "1:9, 2:7"


def test_names_are_cut_at_a_character_boundary():
    assert fit("Γιώργος Παπαδόπουλος") == "Γιώργος Παπα"  # 23 bytes: the 24th would split the δ
    assert len(fit("Γιώργος Παπαδόπουλος").encode()) <= 24
    assert fit("Ana Lima") == "Ana Lima"


class FakeClock:
    def callLater(self, *args):
        raise AssertionError("not expected here")


def test_a_zk_station_counts_changes_until_the_gateway_reads_the_table_that_shows_them():
    from simulator.people import People

    device = ZkDevice()
    station = ZkStation(7, device, seed=1, reactor=FakeClock())
    station.enroll(People(1).person("7-1"))
    station.verify("7-1")
    station.verify("nobody")  # turned away: nothing logged
    assert station.produced == 1
    assert station.unacknowledged == 3  # the user, their finger, the punch
    device.received(Packet(Command.PREPARE_BUFFER, data=buffer_request(USERS)))
    assert station.unacknowledged == 2
    uid = device.user("7-1").uid
    fid = next(f for (u, f) in device.templates if u == uid)
    device.received(Packet(Command.GET_USERTEMP, data=uid.to_bytes(2, "little") + bytes([fid])))
    assert station.unacknowledged == 1
    device.event_acknowledged(EventFlag.ATTLOG)  # the punch's real-time event
    assert station.unacknowledged == 0
    station.verify("7-1")
    device.received(Packet(Command.PREPARE_BUFFER, data=buffer_request(ATTENDANCE)))
    assert station.unacknowledged == 0
    station.enroll(People(1).person("7-2"))
    station.delete("7-1")
    assert station.unacknowledged == 3 and station.deleted_here == {"7-1"} and "7-1" not in station.changed_here
    device.received(Packet(Command.GET_FREE_SIZES))  # counts of tables that are not empty show no change
    assert station.unacknowledged == 3
    station.delete("7-2")
    device.received(Packet(Command.GET_FREE_SIZES))  # 0 users, 0 templates: both tables seen whole
    assert station.unacknowledged == 0


def run_zk_fleet(tmp_path, **spec_values):
    spec = FleetSpec(dump=str(tmp_path / "dump"), settle_s=1.0, drain_timeout=30, **spec_values)
    syncs = []

    def with_standin(ports):
        syncs.append(NaiveZkSync(ports, spec.zk_comm_key).start())
        return None

    measured = {}

    def idle_then_stop(fleet):
        measured.update(fleet.measure_idle(0.6))
        syncs[0].stop()  # before the devices go off the network at the end

    try:
        result = Fleet(spec).run(on_listening=with_standin, connect_timeout=30, on_settled=idle_then_stop)
    finally:
        if syncs:
            syncs[0].stop()
    dumps = {int(p.stem.split("-")[1]): json.loads(p.read_text()) for p in (tmp_path / "dump").glob("terminal-*.json")}
    return result, dumps, measured


def test_a_zk_fleet_enrols_punches_converges_and_dumps(tmp_path):
    result, dumps, idle = run_zk_fleet(tmp_path, devices=4, kind="zk", workers=2, scenario="mixed", rate=15, duration=2.0,
                                       zk_comm_key=4321)
    assert result.settled
    assert sorted(result.zk_ports) == [1, 2, 3, 4] and len(set(result.zk_ports.values())) == 4
    assert sorted(dumps) == [1, 2, 3, 4]
    assert all(d["kind"] == "zk" and d["port"] == result.zk_ports[t] and d["unacknowledged"] == 0 for t, d in dumps.items())
    assert result.produced == sum(d["punches"] for d in dumps.values()) > 0
    enrolled = {user_id for d in dumps.values() for user_id in d["changed_here"]}
    assert enrolled and len(result.propagation) >= len([u for u in enrolled if u.count("-") == 1])
    # the stand-in copies every user everywhere (and undoes deletes): every device holds everyone, templates included
    everyone = set().union(*(d["users"] for d in dumps.values()))
    for d in dumps.values():
        assert set(d["users"]) == everyone
        assert all(d["users"][u]["fingers"] for u in everyone)
    steady, incomplete = propagation_figures(result.propagation)
    assert incomplete == 0 and steady["p50"] > 0
    assert idle["zk_devices"] == 4 and idle["zk_requests"] > 0 and idle["zk_bytes"] > 0 and idle["zk_writes"] == 0


def test_a_mixed_fleet_splits_native_terminals_and_zk_devices(tmp_path):
    """The native half dials a real gateway, the ZK half is kept by the stand-in: the two halves
    do not exchange users here (that needs the gateway's ZK driver), each converges in itself."""
    gateway = GatewayProcess(tmp_path, f"sqlite:///{tmp_path / 'gateway.db'}", secret="fleet-secret").start()
    try:
        result, dumps, _ = run_zk_fleet(tmp_path, devices=5, kind="mixed", workers=1, scenario="enroll-storm", rate=6,
                                        duration=1.5, gateway=f"127.0.0.1:{gateway.tcp_port}")
    finally:
        gateway.stop()
    assert result.settled
    assert {t: d["kind"] for t, d in dumps.items()} == {1: "native", 2: "native", 3: "native", 4: "zk", 5: "zk"}
    assert sorted(result.zk_ports) == [4, 5]
    assert set(dumps[4]["users"]) == set(dumps[5]["users"]) and dumps[4]["users"]
    assert {u for u in dumps[1]["users"]} == {u for u in dumps[2]["users"]} == {u for u in dumps[3]["users"]}


def test_the_command_writes_the_gateway_configuration_once_the_devices_listen(tmp_path):
    config_path = tmp_path / "fleet.toml"
    proc = Process("simulator.cli", "fleet", "--kind", "mixed", "--devices", "3", "--zk-config", str(config_path),
                   "--gateway", "127.0.0.1:9", "--workers", "1", "--poll-s", "1.5", "--zk-port", "0")
    try:
        port = int(proc.wait_for(r"1 ZK devices listening on 127.0.0.1, ports (\d+)").group(1))
        proc.wait_for(f"gateway configuration for the fleet written to {config_path}")
    finally:
        proc.stop()
    config = tomllib.loads(config_path.read_text())
    assert config["zk"] == [dict(id=3, host="127.0.0.1", port=port, comm_key=0, name="zk-3", poll_s=1.5)]
    assert config["admission"] == "open" and config["default_secret"] == "fleet-secret"


def test_a_zk_fleet_without_a_gateway_address_is_fine_but_natives_need_one():
    out = subprocess.run([BIN / "simulator", "fleet", "--devices", "2"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "native terminals need --gateway HOST:PORT or --listen BASEPORT" in out.stderr


class _Exited:
    def wait(self):
        return 0


def test_a_worker_that_exits_after_its_result_is_no_failure_while_a_slower_one_still_reports():
    fleet = Fleet(FleetSpec(devices=2, workers=2))
    fleet._procs = [_Exited(), _Exited()]
    for item in [(1, dict(result="one")), (1, None), (0, dict(result="zero"))]:
        fleet._messages.put(item)
    assert fleet._gather("result", timeout=1) == {1: "one", 0: "zero"}
    fleet._messages.put((0, None))
    fleet._reported.clear()
    with pytest.raises(FleetError, match="fleet worker 0 ended early"):
        fleet._gather("sample", timeout=1)
