"""PUSH benchmark: one ATTLOG upload of 10,000 lines, parsed, and parsed and stored.

"parse" is protocol.zk.push's parser alone. "upload" is a real ``gateway run`` (SQLite file,
``[push]`` on loopback) taking the body in one POST: the clock runs from sending the request to
the answer, which the gateway gives only once every punch is durable. The first upload after a
start is checked against the event log (the gateway cannot know what it stored before); the next
ones are not. "raw insert" is the yardstick, in the same run: event rows inserted with
SQLAlchemy Core in batches as large as the gateway's group commits into a scratch SQLite file
(tools/loadtest/baselines.py), nothing else; the issue's target of 50,000 lines/s is then said
as a share of what this machine's database takes at best. One run on one machine, shared:
compare ratios, not absolute numbers. It measures and never fails on slowness.

    python benchmarks/push_attlog.py [--lines N] [--uploads K] [--json FILE]
"""

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from urllib import request as urlrequest

from protocol.zk.push.lines import parse_attlog
from tools.loadtest.baselines import raw_insert

SN = "BENCH000001"
TARGET_LINES_PER_S = 50_000  # issue 21: an upload of 10,000 lines parsed and stored at least this fast


def body(lines: int, start: datetime) -> bytes:
    return "".join(f"{1000 + n % 500}\t{(start + timedelta(seconds=n)).strftime('%Y-%m-%d %H:%M:%S')}\t0\t1\t0\n"
                   for n in range(lines)).encode()


def best_of(runs: int, work) -> float:
    best = float("inf")
    for _ in range(runs):
        began = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - began)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=10_000)
    parser.add_argument("--uploads", type=int, default=3)
    parser.add_argument("--json", metavar="FILE", help="also write the figures here")
    args = parser.parse_args()
    figures = dict(lines=args.lines, uploads_lines_per_s=[])
    sample = body(args.lines, datetime(2024, 1, 1))
    parse_s = best_of(5, lambda: parse_attlog(sample))
    print(f"parse   {args.lines} lines: {parse_s * 1000:8.1f} ms  {args.lines / parse_s:12,.0f} lines/s")
    figures["parse_lines_per_s"] = round(args.lines / parse_s)
    with tempfile.TemporaryDirectory() as folder:
        raw = raw_insert(f"sqlite:///{folder}/raw.db", Path(folder), args.lines)["rows_per_s"]
        figures["raw_insert_rows_per_s"] = raw
        print(f"raw insert {args.lines} rows: {raw:12,} rows/s (the target {TARGET_LINES_PER_S:,} is {TARGET_LINES_PER_S / raw:.2f} of it)")
        config = Path(folder) / "gateway.toml"
        config.write_text(f'tcp_host = "127.0.0.1"\nhttp_process = false\n[push]\nhost = "127.0.0.1"\nport = 0\n'
                          f'[[push.devices]]\nsn = "{SN}"\n')
        gateway = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", "--config", str(config), "--db", f"sqlite:///{folder}/g.db",
                                    "--tcp-port", "0", "--http-port", "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            url = None
            deadline = time.monotonic() + 60
            while url is None and time.monotonic() < deadline:
                found = re.search(r"listening for PUSH devices on (http://\S+)/iclock/", gateway.stdout.readline())
                url = found.group(1) if found else None
            if url is None:
                print("the gateway did not start", file=sys.stderr)
                return 1
            for n in range(args.uploads):
                upload = body(args.lines, datetime(2024, 1, 1) + timedelta(days=n))
                req = urlrequest.Request(f"{url}/iclock/cdata?SN={SN}&table=ATTLOG&Stamp={(n + 1) * args.lines}", data=upload, method="POST")
                began = time.perf_counter()
                with urlrequest.urlopen(req, timeout=120) as response:
                    answer = response.read().strip()
                took = time.perf_counter() - began
                kind = "first after start, checked against the log" if n == 0 else "next"
                print(f"upload  {args.lines} lines ({kind}): {took * 1000:8.1f} ms  {args.lines / took:12,.0f} lines/s  answer {answer.decode()}")
                figures["uploads_lines_per_s"].append(round(args.lines / took))
                print(f"        {args.lines / took / raw:.2f} of the raw insert; the target is {TARGET_LINES_PER_S / raw:.2f} of it")
        finally:
            gateway.terminate()
            gateway.wait(30)
    best = max(figures["uploads_lines_per_s"], default=0)
    median = statistics.median(figures["uploads_lines_per_s"] or [0])
    figures["best_upload_vs_raw_insert"] = round(best / figures["raw_insert_rows_per_s"], 3)
    figures["median_upload_vs_raw_insert"] = round(median / figures["raw_insert_rows_per_s"], 3)
    print(f"uploads: best {best:,} lines/s ({figures['best_upload_vs_raw_insert']:.2f} of the raw insert), "
          f"median {median:,.0f} ({figures['median_upload_vs_raw_insert']:.2f})")
    figures["target_vs_raw_insert"] = round(TARGET_LINES_PER_S / figures["raw_insert_rows_per_s"], 3)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
