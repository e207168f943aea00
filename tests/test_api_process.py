"""The API process: ``gateway run`` serves its API, page, /metrics and live stream from a child
process of its own, which answers while the gateway's reactor is stopped, is started again when
it dies, and ends with the gateway, however the gateway ends.

Each test runs the real command, a real simulated terminal and real HTTP on loopback; every wait
is bounded.
"""

import json
import os
import re
import signal
from urllib import error as urlerror
from urllib import request as urlrequest

import pytest

from processes import Process, eventually, start_gateway

TOKEN = "test-token"
STARTED = r"API process started \(pid (\d+)\)"


def http(method: str, url: str, body=None, timeout: float = 10.0):
    req = urlrequest.Request(url, data=json.dumps(body).encode() if body is not None else None, method=method)
    req.add_header("Authorization", f"Bearer {TOKEN}")
    try:
        with urlrequest.urlopen(req, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urlerror.HTTPError as exc:
        return exc.code, exc.read().decode()


def get_json(url: str, timeout: float = 10.0):
    status, text = http("GET", url, timeout=timeout)
    assert status == 200, text
    return json.loads(text)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A child of ours that ended but was not reaped yet is no longer running either.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"


def online(page: str, terminal_id: int):
    found = get_json(page + "api/terminals")["terminals"]
    return any(t["id"] == terminal_id and t["online"] for t in found)


@pytest.fixture
def site(tmp_path):
    """A gateway with terminal 1 configured and dialled in; its process, page URL and API process pid."""
    gateway, tcp_port, page = start_gateway(tmp_path, {1: "Door"})
    terminal = Process("simulator.cli", "terminal", "--gateway", f"127.0.0.1:{tcp_port}", "--id", "1", "--secret", "secret-1",
                       "--keypad", "off")
    try:
        child = int(re.search(STARTED, "".join(gateway.output)).group(1))  # logged before the page's address
        eventually(lambda: online(page, 1), "terminal 1 online, as the API process shows it")
        yield gateway, page, child
    finally:
        terminal.stop()
        gateway.stop()


def test_the_api_answers_while_the_gateway_is_stopped(site):
    gateway, page, child = site
    assert child != gateway.popen.pid
    os.kill(gateway.popen.pid, signal.SIGSTOP)
    try:
        found = get_json(page + "api/terminals", timeout=10)
        assert [t["online"] for t in found["terminals"] if t["id"] == 1] == [True]  # as last read from the gateway
        assert get_json(page + "api/sync")["mode"] == "all-with-device-updates"
        assert "events" in get_json(page + "api/events?limit=5")
        metrics = http("GET", page + "metrics")[1]
        for name in ("gateway_terminals_online 1.0", "gateway_events_ingested_total", "gateway_events_waiting"):
            assert name in metrics
        assert metric(metrics, "gateway_api_metrics_age_seconds") > 1.0  # the last read, and it says so
        # It says how old what it shows is: older than the gateway was stopped.
        eventually(lambda: snapshot_age(page) > 1.0, "the snapshot's age to grow past a second", timeout=10)
    finally:
        os.kill(gateway.popen.pid, signal.SIGCONT)
    eventually(lambda: snapshot_age(page) < 1.0, "a fresh snapshot once the gateway runs again")
    # A scrape reads the gateway's metrics afresh (they no longer ride on every snapshot).
    assert metric(http("GET", page + "metrics")[1], "gateway_api_metrics_age_seconds") < 1.0


def metric(exposition: str, name: str) -> float:
    for line in exposition.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"/metrics has no {name}")


def snapshot_age(page: str) -> float:
    return metric(http("GET", page + "metrics")[1], "gateway_api_snapshot_age_seconds")


def test_a_write_goes_through_the_gateway_and_reads_back_at_once(site):
    _, page, _ = site
    status, text = http("PUT", page + "api/sync", {"mode": "specific"})
    assert status == 200, text
    assert get_json(page + "api/sync")["mode"] == "specific"  # the mirror was refreshed before the answer
    status, text = http("POST", page + "api/users", {"user_id": "77", "name": "Ana"})
    assert status == 201, text
    assert get_json(page + "api/users/77")["name"] == "Ana"
    # Refused before the gateway sees it: the API process checks token and body itself.
    status, text = http("PUT", page + "api/sync", {"mode": "sometimes"})
    assert status == 400 and "mode" in json.loads(text)["error"], text
    # An error the gateway answers comes back as it said it.
    status, text = http("POST", page + "api/users", {"user_id": "77"})
    assert status == 409 and json.loads(text) == {"error": json.loads(text)["error"], "status": 409}, text


def test_a_killed_api_process_is_started_again(site):
    gateway, page, child = site
    os.kill(child, signal.SIGKILL)
    again = int(gateway.wait_for(STARTED, timeout=30).group(1))
    assert again != child
    gateway.wait_for(r"serving the page and API", timeout=30)
    assert online(page, 1)


def test_the_api_process_ends_with_the_gateway(site):
    gateway, _, child = site
    gateway.popen.terminate()
    assert gateway.wait_exit(20) == 0
    eventually(lambda: not alive(child), "the API process to end with the gateway", timeout=10)


def test_the_api_process_ends_when_the_gateway_is_killed(site):
    gateway, _, child = site
    gateway.popen.kill()
    gateway.wait_exit(20)
    eventually(lambda: not alive(child), "the API process to notice its gateway is gone", timeout=10)


def test_a_second_gateway_on_a_port_in_use_cannot_start(site, tmp_path):
    _, page, _ = site
    port = page.rsplit(":", 1)[1].strip("/")
    other = tmp_path / "other"
    other.mkdir()
    second = Process("gateway.cli", "run", "--db", f"sqlite:///{other / 'gateway.db'}", "--tcp-port", "0", "--http-port", port,
                     "--api-token", TOKEN)
    try:
        assert second.wait_exit(30) == 1
        assert "cannot start" in second.all_output() and port in second.all_output()
    finally:
        second.stop()
