"""ZK write passes: the CPU of one pass on each side, the gateway's driver and the emulated device,
in one process with no sockets (the driver tests' ``Wire``: a ZkConnection on a StringTransport,
the device's session on the other end, an in-memory SQLite database answered at once).

A device of ``--users`` people gets one new person per pass, passes ``--gap-s`` apart on the
driver's clock, as every device of a storm does. Measures CPU time (``time.process_time``) and
prints the best of ``--runs`` (the machine's noise only ever adds); ``--json FILE`` also writes
the figures. Compare two trees by running it
with each on PYTHONPATH, alternating:

    python benchmarks/zk_pass.py [--users 100] [--passes 300] [--runs 5] [--json FILE]
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from test_zk_driver import Wire  # noqa: E402  (the driver tests' harness, not a copy of it)

from protocol.records import UserRecord, UserRecordWire  # noqa: E402
from simulator.zk.device import ZkDevice, populate  # noqa: E402


def one_run(users: int, passes: int, gap_s: float) -> dict:
    device = ZkDevice()
    populate(device, users, fingers=1)
    wire = Wire(device).start()
    emulator_s = 0.0
    receive, encode = wire.session.receive, wire._encode

    def timed(work):
        def run(*args):
            nonlocal emulator_s
            began = time.process_time()
            try:
                return work(*args)
            finally:
                emulator_s += time.process_time() - began
        return run

    wire.session.receive, wire._encode = timed(receive), timed(encode)
    requests = sum(device.requests.values())
    began = time.process_time()
    for n in range(passes):
        record = UserRecordWire.build(UserRecord(f"new {n}", name=f"Pushed {n}"))
        wire.call(wire.connection.put_users([record], keep_local_changes=True))
        wire.clock.advance(gap_s)
        wire.pump()
    total_s = time.process_time() - began
    return dict(pass_us=1e6 * total_s / passes, emulator_us=1e6 * emulator_s / passes,
                gateway_us=1e6 * (total_s - emulator_s) / passes,
                requests_per_pass=(sum(device.requests.values()) - requests) / passes)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=100, help="people on the device (default 100)")
    p.add_argument("--passes", type=int, default=300, help="write passes a run (default 300)")
    p.add_argument("--gap-s", type=float, default=0.7, help="seconds between passes on the driver's clock (default 0.7)")
    p.add_argument("--runs", type=int, default=5, help="runs; the best is shown (default 5)")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the figures to FILE")
    args = p.parse_args(argv)
    best = min((one_run(args.users, args.passes, args.gap_s) for _ in range(args.runs)), key=lambda r: r["pass_us"])
    print(f"{args.users} users, one new person a pass, {args.gap_s:g} s apart; best of {args.runs} runs of {args.passes} passes")
    print(f"  per pass: {best['pass_us']:,.0f} us ({best['gateway_us']:,.0f} us the gateway's driver and its database, "
          f"{best['emulator_us']:,.0f} us the emulated device), {best['requests_per_pass']:.1f} requests")
    if args.json:
        args.json.write_text(json.dumps(dict(vars(args), json=None, **best), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
