"""The issue's yardstick for ZK devices, "a ZK delivery no dearer than 4 native ones": the same
load on a fleet of ZK devices and then on native terminals, one after the other on the same
machine, printed side by side with the gateway's CPU per ZK delivery in native deliveries.

Every argument goes to both runs (``gateway-loadtest ...``; ``--poll-s`` only matters to the ZK
one); each writes its own report beside ``--json``, which gets both and the ratios.

    python -m tools.loadtest.zk_vs_native --devices 100 --poll-s 2 --scenario enroll-storm --rate 10 --duration 20 --json zk-vs-native.json
"""

import argparse
import json
import os
import sys
from pathlib import Path

from tools.loadtest import harness
from tools.loadtest.side_by_side import LOSSES

ROWS = (  # (label, the figure of a report, format)
    ("deliveries/s", lambda r: r["user_deliveries_per_s"], "{:,.0f}"),
    ("p50 propagation ms", lambda r: (r["propagation_ms"] or {}).get("p50"), "{:,.0f}"),
    ("p99 propagation ms", lambda r: (r["propagation_ms"] or {}).get("p99"), "{:,.0f}"),
    ("gateway CPU us/delivery", lambda r: r["gateway_cpu_us_per_delivery"], "{:,.0f}"),
)


def table(zk: dict, native: dict) -> str:
    lines = [f"{'':24} {'ZK':>10} {'native':>10} {'ZK/native':>9}"]
    for label, figure, fmt in ROWS:
        a, b = figure(zk), figure(native)
        ratio = f"{a / b:.2f}" if a is not None and b else "-"
        lines.append(f"{label:24} {'-' if a is None else fmt.format(a):>10} {'-' if b is None else fmt.format(b):>10} {ratio:>9}")
    lines.append(f"{'lost, diverged':24} {sum(zk.get(k) or 0 for k in LOSSES):>10} {sum(native.get(k) or 0 for k in LOSSES):>10}")
    return "\n".join(lines)


def run(argv: list[str], kind: str, report: Path) -> tuple[int, dict | None]:
    report.unlink(missing_ok=True)  # a run that fails before writing must not leave an earlier run's report to be read
    status = harness.main([*argv, "--kind", kind, "--json", str(report)])
    return status, json.loads(report.read_text()) if report.exists() else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.loadtest.zk_vs_native", description=__doc__.splitlines()[0])
    p.add_argument("--json", default="zk-vs-native.json", help="both reports and the ratios (each also beside it)")
    args, rest = p.parse_known_args(argv)
    if any(arg == "--kind" or arg.startswith("--kind=") for arg in rest):
        p.error("--kind is this tool's to set: zk, then native")
    out = Path(args.json)
    reports = {}
    status = 0
    for kind in ("zk", "native"):
        kind_status, reports[kind] = run(rest, kind, out.with_name(f"{out.stem}-{kind}.json"))
        status = status or kind_status
        if reports[kind] is None:
            print(f"the {kind} run wrote no report", file=sys.stderr)
            return status or 1
    zk, native = reports["zk"], reports["native"]
    print(table(zk, native))
    zk_us, native_us = zk["gateway_cpu_us_per_delivery"], native["gateway_cpu_us_per_delivery"]
    cpu_ratio = zk_us / native_us if zk_us is not None and native_us else None
    summary = dict(zk=zk, native=native, load_average=os.getloadavg()[0],
                   zk_delivery_in_native_deliveries=None if cpu_ratio is None else round(cpu_ratio, 2))
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"a ZK delivery costs the gateway {summary['zk_delivery_in_native_deliveries']} native ones; both reports written to {out}")
    return status


if __name__ == "__main__":
    sys.exit(main())
