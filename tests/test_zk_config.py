"""[[zk]] entries and ``gateway run --zk``: checked like every setting, one line per mistake; a ZK
device's id is not for native terminals to take."""

import pytest

from gateway.config import ConfigError, GatewayConfig
from gateway.sync.connection import Refused, TerminalInfo
from gateway.terminals import Terminal, TerminalRegistry
from gateway.zk.config import parse_zk, zk_from_option
from gateway.zk.kind import ZK


def test_a_zk_entry_takes_its_defaults():
    entry = parse_zk(dict(id=7, host="10.0.0.61"))
    assert (entry.port, entry.comm_key, entry.name, entry.groups, entry.poll_s, entry.timeout_s) == (4370, 0, "", [], 5.0, 10.0)
    assert (entry.timezone, entry.set_clock) == ("", False), "the gateway's local zone; the device's clock left alone"
    assert parse_zk(dict(id=7, host="h", timezone="Europe/Madrid", set_clock=True)).timezone == "Europe/Madrid"


def test_the_link_settings_reach_each_connections_client():
    from gateway.zk.driver import LinkSettings
    from protocol.zk.client import MAX_TRANSFER, Framing

    default = LinkSettings.of(parse_zk(dict(id=7, host="h")))
    assert default == LinkSettings() and default.max_transfer == MAX_TRANSFER
    client = LinkSettings.of(parse_zk(dict(id=7, host="h", transport="udp", timeout_s=3, request_limit_s=30, operation_limit_s=90,
                                           max_transfer_mb=8, chunk_size=4096))).client(55)
    assert (client.framing, client.comm_key, client.timeout_s, client.request_limit_s, client.operation_limit_s, client.max_transfer,
            client.chunk_size) == (Framing.UDP, 55, 3, 30, 90, 8 * 1024 * 1024, 4096)
    assert LinkSettings(transport="udp").client(0).chunk_size == 16 * 1024, "0: the transport's default"


@pytest.mark.parametrize("entry, message", [
    (dict(id=7, host="h", transport="serial"), "zk terminal 7: transport must be one of tcp, udp"),
    (dict(id=7, host="h", chunk_size=70_000), "zk terminal 7: chunk_size must be at most 65472"),
    (dict(id=7, host="h", max_transfer_mb=0), "zk terminal 7: max_transfer_mb must be more than 0.0"),
    (dict(id=7, host="h", comm_key=1_000_000), "zk terminal 7: comm_key must be at most 999999"),
    (dict(id=7, host="h", port=0), "zk terminal 7: port must be at least 1"),
    (dict(id=7, host="h", poll_s=0), "zk terminal 7: poll_s must be at least 0.1"),
    (dict(id=7, host="h", secret="s"), "zk terminal 7: unknown setting secret"),
    (dict(host="h"), "[[zk]] entry 1: id is required"),
    (dict(id=7, host="h", timezone="Europe/Atlantis"),
     "zk terminal 7: timezone 'Europe/Atlantis' is no time zone this machine knows (an IANA name: Europe/Madrid)"),
])
def test_mistakes_are_one_line_naming_the_setting(entry, message):
    with pytest.raises(ConfigError) as refused:
        GatewayConfig.load(None, zk=[entry])
    assert str(refused.value) == message


def test_zk_ids_share_the_terminal_ids():
    with pytest.raises(ConfigError, match="terminal 7 is configured twice"):
        GatewayConfig.load(None, terminals=[dict(id=7, secret="s")], zk=[dict(id=7, host="h")])


def test_the_command_line_device_gets_a_stable_id_unless_given_one():
    derived = zk_from_option("10.0.0.61")
    assert derived == dict(id=derived["id"], host="10.0.0.61", port=4370, comm_key=0)
    assert zk_from_option("10.0.0.61:4370") == derived, "the same device, the same id at every start"
    assert zk_from_option("10.0.0.61:4371")["id"] != derived["id"]
    assert zk_from_option("zk.local:5000", 9, 123) == dict(id=9, host="zk.local", port=5000, comm_key=123)
    config = GatewayConfig.load(None, zk=[zk_from_option("10.0.0.61", 9)])
    assert parse_zk(config.sections["zk"][0]).id == 9
    with pytest.raises(ConfigError, match="HOST"):
        zk_from_option(":4370")


def test_a_native_terminal_cannot_take_a_zk_devices_id():
    registry = TerminalRegistry(db=None, clock=None, policy="open", default_secret="lab", configured=[])
    registry.terminals[7] = Terminal(7, kind=ZK.name)
    with pytest.raises(Refused, match="ZKTeco device"):
        registry.secret_for(7, TerminalInfo(), "tcp 10.0.0.9:5000")
