"""The ``[push]`` section (gateway/push/settings.py): checked as every setting is, one line per mistake."""

import pytest

from gateway.config import ConfigError, GatewayConfig
from gateway.push.settings import parse_push, terminal_id_of


def load(push, **more):
    return GatewayConfig.load(None, push=push, **more)


def test_off_unless_given_and_defaults():
    assert GatewayConfig.load(None).section("push") is None
    entry = parse_push({"devices": [{"sn": "A1"}]})
    assert (entry.port, entry.delay_s, entry.silent_s) == (8081, 10, 60.0)
    assert entry.devices[0].terminal_id == terminal_id_of("A1") == terminal_id_of("A1")
    assert entry.devices[0].push_version == "auto" and parse_push({"devices": [{"sn": "A1", "push_version": "3"}]}).devices[0].push_version == "3"


@pytest.mark.parametrize("push, message", [
    ({"port": 70000}, r"\[push\].*port"),
    ({"cert": "a.pem"}, "cert and key go together"),
    ({"devices": [{"sn": "A1"}, {"sn": "A1"}]}, "listed twice"),
    ({"devices": [{"sn": "A1", "id": 5}, {"sn": "B2", "id": 5}]}, "same terminal id"),
    ({"devices": [{"sn": "A1", "networks": ["10.0.0.0/33"]}]}, "not a network"),
    ({"devices": [{"sn": "A1", "charset": "klingon"}]}, "unknown charset"),
    ({"proxies": ["proxy.example"]}, "proxies.*not a network"),
    ({"devices": [{"sn": "A1", "secret": "x"}]}, "secret"),
    ({"delay_s": True}, "delay_s"),
    ({"devices": [{"sn": "A1", "push_version": 3}]}, "push_version"),  # a string: "2", "3" or "auto"
])
def test_mistakes_are_one_line(push, message):
    with pytest.raises(ConfigError, match=message) as raised:
        load(push)
    assert "\n" not in str(raised.value)


def test_a_push_device_cannot_take_a_terminals_id():
    with pytest.raises(ConfigError, match="configured twice"):
        load({"devices": [{"sn": "A1", "id": 7}]}, terminals=[{"id": 7, "secret": "s"}])
