"""PUSH benchmark: how long a keypad enrolment at one PUSH device takes to reach every other one.

A real ``gateway run`` (SQLite, ``[push]`` on loopback, admission open) and N emulated PUSH
devices (simulator/push/) calling it from this process, each at the gateway's ``Delay``. One
enrolment at a time at a device chosen in turn; the clock runs from the keypad until each other
device holds the person. The bound to compare with is ``Delay`` + 1 s: a device learns of a
change at its next getrequest. Prints p50/p99/max and how many deliveries never came. One run on
a shared machine: compare ratios, not absolute numbers. It measures and never fails on slowness.

    python benchmarks/push_propagation.py [--devices 100] [--enrolments 10] [--delay-s 10] [--json FILE]
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

from simulator.push.client import PushCaller
from simulator.push.device import PushTerminal


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))] if ordered else float("nan")


@defer.inlineCallbacks
def measure(reactor, args, push_url: str, page: str):
    devices = [PushTerminal(f"PROP{n:06d}") for n in range(args.devices)]
    callers = [PushCaller(d, push_url, reactor) for d in devices]
    for caller in callers:
        caller.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not all(c.answers >= 3 for c in callers):  # initialized, listed, asked again
        yield task.deferLater(reactor, 0.5, lambda: None)
    print(f"{sum(c.answers >= 3 for c in callers)} of {len(devices)} devices talking to the gateway")
    yield task.deferLater(reactor, args.delay_s + 2, lambda: None)  # their first listings answered
    times, lost = [], 0
    for n in range(args.enrolments):
        source = devices[n % len(devices)]
        pin = f"9{n:05d}"
        began = time.monotonic()
        source.enroll(pin, name=f"Person {n}")
        callers[n % len(devices)].wake()
        waiting = {d.serial for d in devices if d is not source}
        limit = began + 3 * args.delay_s + 30
        while waiting and time.monotonic() < limit:
            yield task.deferLater(reactor, 0.05, lambda: None)
            for d in devices:
                if d.serial in waiting and pin in d.users:
                    waiting.discard(d.serial)
                    times.append(time.monotonic() - began)
        lost += len(waiting)
        print(f"enrolment {n}: slowest delivery {max(times[-(len(devices) - 1 - len(waiting)):], default=0):.2f} s")
    for caller in callers:
        caller.stop()
    print(f"{len(times)} deliveries of {args.enrolments} enrolments to {len(devices) - 1} devices each; never arrived: {lost}")
    print(f"propagation s: p50 {percentile(times, 50):.2f}  p99 {percentile(times, 99):.2f}  max {max(times, default=float('nan')):.2f}"
          f"  (Delay {args.delay_s} s + 1 s = {args.delay_s + 1} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(devices=len(devices), enrolments=args.enrolments, delay_s=args.delay_s, deliveries=len(times),
                                                   lost=lost, propagation_s=dict(p50=percentile(times, 50), p99=percentile(times, 99),
                                                                                 max=max(times, default=None))), indent=2))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--enrolments", type=int, default=10)
    parser.add_argument("--delay-s", type=int, default=10)
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
