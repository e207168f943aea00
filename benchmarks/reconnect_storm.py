"""A reconnect storm on a live gateway (``gateway run``, its own process, SQLite): every terminal
of a simulated fleet dials in at once, as after a site's power cut, then the fleet stays idle.

Figures: how long until every terminal was online; the gateway's resident memory with none and
with all of them (per terminal: the difference over the count); the gateway's CPU while they
are idle (keepalives, sweeps); what was refused or dropped on the way (the doorman's refusals,
the kernel's overflows of the accept queue) and the fleet's own dials.

    python benchmarks/reconnect_storm.py --devices 1000 [--idle-seconds 10] [--json FILE]
    python benchmarks/reconnect_storm.py --devices 10000 --workers 4

Prints a table; exits 1 only when the fleet did not come online within ``--connect-timeout``
(its error names terminals that were not, and why), never on a figure.
"""

import argparse
import json
import re
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from simulator.fleet import Fleet, FleetError, FleetSpec
from tools.loadtest.gateway_process import GatewayFailed, GatewayProcess

SECRET = "storm-secret"
_SAMPLE = re.compile(r'^(gateway_[a-z_]+?)(?:_total)?(?:\{reason="([a-z_]+)"\})? ([0-9.e+]+)$', re.M)


def gateway_counts(gateway: GatewayProcess) -> dict:
    """The gateway's own counts of what it refused or lost before a handshake (/metrics)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{gateway.http_port}/metrics", timeout=30).read().decode()
    counts = {}
    for name, reason, value in _SAMPLE.findall(text):
        if name in ("gateway_links_refused", "gateway_listen_overflows", "gateway_terminals_online"):
            counts[f"{name}:{reason}" if reason else name] = float(value)
    return counts


def storm(devices: int, idle_s: float, workers: int, connect_timeout: float, run_dir: Path) -> dict:
    gateway = GatewayProcess(run_dir, f"sqlite:///{run_dir / 'gateway.db'}", secret=SECRET).start()
    try:
        time.sleep(1.0)  # the first sweep and reconciliation pass have run: its memory with no terminal
        figures = dict(devices=devices, rss_empty_mib=round(gateway.memory_mb(), 1))
        spec = FleetSpec(devices=devices, gateway=f"127.0.0.1:{gateway.tcp_port}", scenario="enroll-storm", rate=0.0,
                         duration=0.5, secret=SECRET, workers=workers, settle_s=0.0)
        fleet = Fleet(spec, log_file=open(run_dir / "fleet.log", "w"))
        cpu_start = gateway.cpu_s()

        def idle():
            figures["online_s"] = fleet.online_s
            figures["gateway_cpu_to_online_s"] = round(gateway.cpu_s() - cpu_start, 2)
            before_cpu, started = gateway.cpu_s(), time.monotonic()
            time.sleep(idle_s)
            figures["idle_cpu_share"] = round((gateway.cpu_s() - before_cpu) / (time.monotonic() - started), 4)
            figures["rss_online_mib"] = round(gateway.memory_mb(), 1)
            figures["rss_per_terminal_kib"] = round((figures["rss_online_mib"] - figures["rss_empty_mib"]) * 1024 / devices, 2)
            figures.update(gateway_counts(gateway))

        result = fleet.run(on_ready=idle, connect_timeout=connect_timeout)
        figures.update(workers=result.workers, fleet_cpu_s=result.cpu_s, rss_peak_mib=round(gateway.memory_mb("VmHWM"), 1))
    finally:
        gateway.stop()
    figures["accept_queue_seen_full"] = seen_full(gateway.log_path.read_text())
    return figures


def seen_full(log: str) -> int:
    """How often the gateway found its own accept queue full (the kernel's overflow count is the
    host's): its warnings, each said once and then summarised (gateway/quietlog.py)."""
    said = len(re.findall(r"accept queue of port \d+ full", log))
    return said + sum(int(n) for n in re.findall(r"(\d+) more full accept queues from", log))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=1000, help="simulated terminals (default 1000)")
    p.add_argument("--idle-seconds", type=float, default=10.0, help="idle time measured once all are online (default 10)")
    p.add_argument("--workers", type=int, default=0, help="fleet worker processes (default: as the cores and file limits suit)")
    p.add_argument("--connect-timeout", type=float, default=None,
                   help="longest wait for every terminal to be online (default 30 s + 50 ms per terminal)")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(argv)
    timeout = args.connect_timeout or 30 + args.devices * 0.05
    with tempfile.TemporaryDirectory(prefix="storm-") as folder:
        try:
            figures = storm(args.devices, args.idle_seconds, args.workers, timeout, Path(folder))
        except (FleetError, GatewayFailed) as exc:
            print(f"reconnect storm: {exc}", file=sys.stderr)
            return 1
    rows = [
        ("terminals / fleet workers", f"{figures['devices']:,} / {figures['workers']}"),
        ("all online after", f"{figures['online_s']} s"),
        ("gateway CPU until then", f"{figures['gateway_cpu_to_online_s']} s"),
        ("gateway RSS empty / online", f"{figures['rss_empty_mib']} / {figures['rss_online_mib']} MiB"),
        ("  per terminal", f"{figures['rss_per_terminal_kib']} KiB"),
        ("gateway CPU while idle", f"{figures['idle_cpu_share'] * 100:.1f} % of a core over {args.idle_seconds:g} s"),
        ("refused at the door", ", ".join(f"{value:,.0f} {key.split(':')[1]}" for key, value in figures.items()
                                          if key.startswith("gateway_links_refused:")) or "none"),
        ("dropped by the kernel", f"{figures.get('gateway_listen_overflows', 0):,.0f} at a full accept queue on the host; "
                                  f"this gateway's queue seen full {figures['accept_queue_seen_full']} times"),
    ]
    for name, value in rows:
        print(f"{name:28} {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
