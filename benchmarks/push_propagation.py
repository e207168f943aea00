"""PUSH benchmark: how long a keypad enrolment at one PUSH device takes to reach every other one.

A real ``gateway run`` (SQLite, ``[push]`` on loopback, admission open) and N emulated PUSH
devices (simulator/push/) calling it from this process, each at the gateway's ``Delay``. One
enrolment at a time at a device chosen in turn; the clock runs from the keypad until each other
device holds the person. The bound to compare with is ``Delay`` + 1 s: a device learns of a
change at its next getrequest. Prints p50/p99/max and how many deliveries never came. One run on
a shared machine: compare ratios, not absolute numbers. It measures and never fails on slowness.

    python benchmarks/push_propagation.py [--devices 100] [--enrolments 10] [--delay-s 10] [--push-version 2|3|mixed] [--json FILE]

``--push-version 3`` makes every device a PUSH 3.x access device, ``mixed`` every other one.
"""

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from twisted.internet import defer, task

from protocol.figures import percentiles
from simulator.push.station import PushStation, until


@defer.inlineCallbacks
def measure(reactor, args, push_url: str, page: str):
    versions = {"2": (2,), "3": (3,), "mixed": (2, 3)}[args.push_version]
    station = PushStation(reactor, push_url, args.devices, prefix="PROP", push_versions=versions)
    station.start()
    yield until(reactor, lambda: station.talking() == args.devices, 120, 0.5)
    print(f"{station.talking()} of {args.devices} devices talking to the gateway")
    yield task.deferLater(reactor, args.delay_s + 2, lambda: None)  # their first listings answered
    for n in range(args.enrolments):
        enrolment = station.enrol(n % args.devices, f"9{n:05d}", f"Person {n}")
        yield until(reactor, lambda: not enrolment.waiting, 3 * args.delay_s + 30, 0.05)
        print(f"enrolment {n}: slowest delivery {max(enrolment.delivered_s, default=0):.2f} s")
    station.stop()
    times, lost = station.deliveries_s(), station.never_arrived()
    figures = percentiles(times) or dict(p50=float("nan"), p99=float("nan"), max=float("nan"))
    print(f"{len(times)} deliveries of {args.enrolments} enrolments to {args.devices - 1} devices each; never arrived: {lost}")
    print(f"propagation s: p50 {figures['p50']:.2f}  p99 {figures['p99']:.2f}  max {figures['max']:.2f}"
          f"  (Delay {args.delay_s} s + 1 s = {args.delay_s + 1} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(devices=args.devices, push_version=args.push_version, enrolments=args.enrolments,
                                                   delay_s=args.delay_s, deliveries=len(times),
                                                   lost=lost, propagation_s=percentiles(times)), indent=2))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--enrolments", type=int, default=10)
    parser.add_argument("--delay-s", type=int, default=10)
    parser.add_argument("--push-version", choices=("2", "3", "mixed"), default="2", help="the devices' PUSH: 2.x, 3.x, or every other one 3.x")
    parser.add_argument("--json", metavar="FILE", help="also write the figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "gateway.toml"
        config.write_text(f'tcp_host = "127.0.0.1"\nadmission = "open"\ndefault_secret = "lab"\nsync_mode = "all-with-device-updates"\n'
                          f'[push]\nhost = "127.0.0.1"\nport = 0\ndelay_s = {args.delay_s}\n')
        gateway = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", "--config", str(config), "--db", f"sqlite:///{folder}/g.db",
                                    "--tcp-port", "0", "--http-port", "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            found = {}
            deadline = time.monotonic() + 60
            while len(found) < 2 and time.monotonic() < deadline:
                line = gateway.stdout.readline()
                for key, pattern in (("page", r"monitoring page at (http://\S+/)"), ("push", r"listening for PUSH devices on (http://\S+)/iclock/")):
                    match = re.search(pattern, line)
                    if match:
                        found[key] = match.group(1)
            if len(found) < 2:
                print("the gateway did not start", file=sys.stderr)
                return 1
            task.react(lambda reactor: measure(reactor, args, found["push"], found["page"]))
        finally:
            gateway.terminate()
            gateway.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
