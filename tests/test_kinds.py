"""A kind of terminal plugs in at one place (gateway/kinds.py): the configuration loader, the
registry, the service and the OpenAPI document learn it from there."""

import pytest
from twisted.internet.testing import MemoryReactorClock

from gateway import kinds
from gateway.config import ConfigError, GatewayConfig
from gateway.http.openapi import document
from gateway.process.service import Gateway
from gateway.sync.connection import Refused, TerminalInfo


@pytest.fixture
def lamp_registered(monkeypatch):
    monkeypatch.setitem(kinds.REGISTERED, "lamp", "tests.fake_kind:LAMP")
    kinds.kinds.cache_clear()
    yield
    kinds.kinds.cache_clear()


def test_a_registered_kind_brings_its_configuration_section(lamp_registered, tmp_path):
    path = tmp_path / "gateway.toml"
    path.write_text('[[terminals]]\nid = 1\nsecret = "s"\n\n[[lamps]]\nid = 9\nname = "porch"\n')
    config = GatewayConfig.load(str(path))
    assert config.section("lamps") == [dict(id=9, name="porch")] and [t["id"] for t in config.section("terminals")] == [1]
    path.write_text('[[terminals]]\nid = 9\nsecret = "s"\n\n[[lamps]]\nid = 9\n')
    with pytest.raises(ConfigError, match="terminal 9 is configured twice"):
        GatewayConfig.load(str(path))


def test_without_its_registration_the_section_is_unknown(tmp_path):
    path = tmp_path / "gateway.toml"
    path.write_text("[[lamps]]\nid = 9\n")
    with pytest.raises(ConfigError, match="lamps"):
        GatewayConfig.load(str(path))


def test_the_service_serves_it_and_the_registry_refuses_it_a_native_session(lamp_registered, tmp_path):
    config = GatewayConfig.load(None, db=f"sqlite:///{tmp_path}/g.db", tcp_host="127.0.0.1", tcp_port=0, http_port=0,
                                http_process=False, lamps=[dict(id=9, name="porch")])
    gateway = Gateway(config, MemoryReactorClock())
    gateway.start()
    try:
        lamps = gateway.serving["lamp"]
        assert lamps.running and lamps.ids == [9]
        assert gateway.registry.terminals[9].kind == "lamp" and gateway.registry.terminals[9].name == "porch"
        with pytest.raises(Refused, match="a lamp that calls in"):
            gateway.registry.secret_for(9, TerminalInfo(), "tcp 10.0.0.9:5000")
    finally:
        gateway.stop()
    assert not lamps.running


def test_the_openapi_document_lists_it(lamp_registered):
    terminal = document([])["components"]["schemas"]["Terminal"]["properties"]["kind"]
    assert terminal["enum"] == ["native", "zk", "push", "lamp"] and "a lamp that calls in" in terminal["description"]
