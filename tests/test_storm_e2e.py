"""A reconnect storm: a thousand terminals dialling a real gateway process at once over loopback
all come online within a bounded wait, and what was refused on the way is counted. The gateway
listens with room for a site dialling at once (the accept queue the kernel reports)."""

import json
import subprocess
import sys
from pathlib import Path

from twisted.internet import defer

from gateway.native.accept import LISTEN_BACKLOG, accept_queue
from live_site import LiveTestCase, Site

ROOT = Path(__file__).resolve().parent.parent
DEVICES = 1000
CONNECT_TIMEOUT_S = 120  # a bound, not a figure: the benchmark prints how long it took


def test_a_thousand_terminals_dialling_at_once_are_all_online(tmp_path):
    out = tmp_path / "storm.json"
    run = subprocess.run([sys.executable, "benchmarks/reconnect_storm.py", "--devices", str(DEVICES), "--idle-seconds", "1",
                          "--connect-timeout", str(CONNECT_TIMEOUT_S), "--json", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=CONNECT_TIMEOUT_S + 120)
    assert run.returncode == 0, run.stderr  # on a time-out it names terminals not online and why
    figures = json.loads(out.read_text())
    print(run.stdout)
    assert figures["gateway_terminals_online"] == DEVICES  # the gateway's count, not the fleet's
    assert figures["online_s"] is not None


def somaxconn() -> int:
    return int(Path("/proc/sys/net/core/somaxconn").read_text())


class ListenBacklog(LiveTestCase):
    @defer.inlineCallbacks
    def test_the_terminal_port_queues_a_site_dialling_at_once(self):
        site = Site(self.db_url, terminal_ids=())
        site.gateway.start()
        try:
            waiting, most = accept_queue(site.gateway.tcp_port.socket)
            assert (waiting, most) == (0, min(LISTEN_BACKLOG, somaxconn()))
            assert most > 50  # Twisted's default, which a storm overflows
        finally:
            yield site.stop()
