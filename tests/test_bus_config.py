"""``simulator bus`` gives a gateway configuration that works as it is: the bus's ``[[serial]]``
entry and a ``[[terminals]]`` entry per terminal, so the default allowlist admits them."""

import json
import tomllib
from urllib import request

from gateway.config import GatewayConfig, parse_serial
from processes import Process, eventually

BUS = ["simulator.cli", "bus", "--devices", "2", "--baud", "115200"]


def online_terminals(page: str) -> set[int]:
    with request.urlopen(f"{page}api/terminals", timeout=10) as response:
        return {t["id"] for t in json.loads(response.read())["terminals"] if t["online"]}


def test_the_written_configuration_brings_every_bus_terminal_online_under_the_default_allowlist(tmp_path):
    written = tmp_path / "bus.toml"
    bus = Process(*BUS, "--write-config", str(written))
    try:
        device = bus.wait_for(r"^(/dev/\S+)$").group(1)
        bus.wait_for(rf"gateway configuration written to {written}: gateway run --config {written}")
        config = GatewayConfig.load(str(written))
        assert parse_serial(config.serial[0]).addresses == ((1, 201), (2, 202))
        assert [(t["id"], t["secret"]) for t in config.terminals] == [(201, "secret-201"), (202, "secret-202")]
        assert config.serial[0]["device"] == device
        gateway = Process("gateway.cli", "run", "--config", str(written), "--db", f"sqlite:///{tmp_path / 'bus.db'}",
                          "--tcp-port", "0", "--http-port", "0")
        try:
            page = gateway.wait_for(r"monitoring page at (http://\S+/)").group(1)
            eventually(lambda: online_terminals(page) == {201, 202}, "both bus terminals online", timeout=30)
        finally:
            gateway.stop()
    finally:
        bus.stop()


def test_the_printed_configuration_is_the_one_it_would_write(tmp_path):
    written = tmp_path / "bus.toml"
    written.write_text("# Written by `simulator bus` for its emulated RS-485 bus: gateway run --config THIS_FILE\n"
                       '[[serial]]\ndevice = "/dev/pts/99"\n')  # its own, for an older bus: replaced
    bus = Process(*BUS, "--write-config", str(written), "--echo")
    printing = Process(*BUS, "--echo", "--link", str(tmp_path / "bus0"))
    try:
        bus.wait_for("gateway configuration written to")
        printing.wait_for(r'^echo = true')  # its last line: the whole configuration was printed
    finally:
        bus.stop()
        printing.stop()
    pasted = printing.all_output().split("gateway configuration (")[1].split("\n", 1)[1]
    printed, kept = tomllib.loads(pasted), tomllib.loads(written.read_text())
    assert printed["serial"][0]["device"] == str(tmp_path / "bus0")
    for config in (printed, kept):
        del config["serial"][0]["device"]
    assert printed == kept
    assert kept["serial"][0]["echo"] is True


def test_a_file_it_did_not_write_is_never_replaced(tmp_path):
    mine = tmp_path / "gateway.toml"
    mine.write_text('tcp_port = 4370\n')
    refused = Process(*BUS, "--write-config", str(mine))
    assert refused.wait_exit() == 2
    output = refused.all_output()
    assert f"{mine} exists and was not written by simulator bus" in output and "Traceback" not in output
    assert mine.read_text() == 'tcp_port = 4370\n'
