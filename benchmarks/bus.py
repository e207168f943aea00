"""Bus efficiency: how much of an RS-485 line the gateway turns into frames and payload.

For each baud rate, a gateway on a fresh SQLite database masters an emulated bus (simulator.bus,
every byte paced at the baud rate) with eight terminals. A backlog of users with two fingerprints
each is created while sync is disabled; sync is then switched on, and from that moment until every
terminal holds every user the bus analyser counts what crossed the line:

- frame time: the share of the line's time spent carrying frames (target: at least 80%);
- payload: payload bytes per second, and as a share of the line rate.

Then one person with two fingerprints is enrolled at the terminal at address 1 and timed until
the seven others hold them, beside the time the frames alone need on the line.

    python benchmarks/bus.py [--quick] [--rates 9600,38400,115200] [--json FILE]

Prints a table and never fails on a figure; --quick (one rate, a small backlog) is what the
test suite runs to check the script works.
"""

import argparse
import json
import sys
import tempfile

from twisted.internet import defer, task

from gateway.config import GatewayConfig
from gateway.process.service import Gateway
from gateway.sync.syncmode import SyncMode
from protocol.frame import OVERHEAD
from protocol.records import UserRecordWire
from simulator.bus import BITS_PER_CHAR, BusSimulation
from simulator.people import Mix, People

TARGET_FRAME_TIME = 0.8
FIRST_ID = 301


@defer.inlineCallbacks
def _until(reactor, predicate, what: str, timeout_s: float):
    deadline = reactor.seconds() + timeout_s
    while not predicate():
        if reactor.seconds() > deadline:
            raise RuntimeError(f"gave up after {timeout_s:g} s waiting for {what}")
        yield task.deferLater(reactor, 0.02, lambda: None)


@defer.inlineCallbacks
def measure(reactor, baud: int, devices: int, backlog_line_s: float, folder: str):
    """The figures of one baud rate; ``backlog_line_s`` sizes the backlog by the line time it needs."""
    ids = list(range(FIRST_ID, FIRST_ID + devices))
    line_bytes_per_s = baud / BITS_PER_CHAR
    people = People(seed=baud, mix=Mix(fingers=(2, 2), face_chance=0, photo_chance=0, cards=(1, 1)))
    record_bytes = len(UserRecordWire.build(people.person("sizing")))
    backlog = max(2, round(backlog_line_s * line_bytes_per_s / (devices * record_bytes)))
    sim = BusSimulation(reactor, baud, ids)
    config = GatewayConfig(
        db=f"sqlite:///{folder}/bus-{baud}.db", tcp_host="127.0.0.1", tcp_port=0, http_port=0,
        sync_mode=SyncMode.DISABLED.value, terminals=[dict(id=i, secret=f"secret-{i}") for i in ids],
        serial=[dict(device=sim.path, baud=baud, ids=ids)],
    )
    gateway = Gateway(config, reactor)
    gateway.start()
    patience_s = 60 + 20 * backlog_line_s
    try:
        yield _until(reactor, lambda: len(gateway.registry.connected()) == devices, "every terminal online", patience_s)
        users = [people.person(f"backlog-{n:05d}") for n in range(backlog)]
        for user in users:
            yield gateway.users.create(user)
        bus_metrics = gateway.metrics
        before = _counts(sim, bus_metrics, sim.path)
        started = reactor.seconds()
        yield gateway.settings.set_mode(SyncMode.ALL_WITH_DEVICE_UPDATES)
        yield _until(reactor, lambda: all(len(sim.terminal(i).users) == backlog for i in ids),
                     "the backlog on every terminal", patience_s)
        elapsed = reactor.seconds() - started
        after = _counts(sim, bus_metrics, sim.path)
        spent = {k: after[k] - before[k] for k in after}

        person = people.person("enrolled-at-address-1")
        started = reactor.seconds()
        sim.terminal(ids[0]).enroll(person)
        yield _until(reactor, lambda: all(sim.terminal(i).users.get(person.user_id) == person for i in ids[1:]),
                     "the enrolment on the seven others", patience_s)
        push_s = reactor.seconds() - started
    finally:
        yield gateway.stop()
        sim.stop()
    frame_bytes = OVERHEAD + len(UserRecordWire.build(person)) + 2  # a PUT_USERS (or GET_USERS answer) of one user
    return dict(
        baud=baud,
        line_bytes_per_s=line_bytes_per_s,
        backlog_users=backlog,
        backlog_s=round(elapsed, 3),
        frame_time_fraction=round(spent["frame_bytes"] / line_bytes_per_s / elapsed, 4),
        payload_bytes_per_s=round(spent["payload_bytes"] / elapsed, 1),
        payload_fraction=round(spent["payload_bytes"] / line_bytes_per_s / elapsed, 4),
        polls=spent["polls"],
        timeouts=spent["timeouts"],
        crc_errors=spent["crc_errors"],
        one_user_record_bytes=frame_bytes,
        push_one_user_s=round(push_s, 3),
        # the pull from address 1 and one push to each of the seven others, back to back on the line
        push_one_user_wire_s=round(devices * frame_bytes / line_bytes_per_s, 3),
    )


def _counts(sim, metrics, bus: str) -> dict:
    return dict(
        frame_bytes=sim.bus.stats.frame_bytes,
        payload_bytes=sim.bus.stats.payload_bytes,
        polls=int(metrics.value(metrics.bus_polls, bus=bus)),
        timeouts=int(metrics.value(metrics.bus_timeouts, bus=bus)),
        crc_errors=int(metrics.value(metrics.bus_crc_errors, bus=bus)),
    )


def table(results: list[dict]) -> str:
    lines = [
        f"{'baud':>7} {'backlog':>8} {'took':>8} {'frame time':>10} {'payload B/s':>11} {'payload/line':>12} "
        f"{'polls':>6} {'timeouts':>8} {'1 user to 7 others':>19} {'(wire alone)':>12}",
    ]
    for r in results:
        lines.append(
            f"{r['baud']:>7} {r['backlog_users']:>8} {r['backlog_s']:>7.1f}s {r['frame_time_fraction']:>10.1%} "
            f"{r['payload_bytes_per_s']:>11.0f} {r['payload_fraction']:>12.1%} {r['polls']:>6} {r['timeouts']:>8} "
            f"{r['push_one_user_s']:>18.2f}s {r['push_one_user_wire_s']:>11.2f}s"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="9600,38400,115200", help="baud rates, comma separated")
    parser.add_argument("--devices", type=int, default=8, help="terminals on the bus (default 8)")
    parser.add_argument("--backlog-seconds", type=float, default=30.0, help="size the backlog to this much line time")
    parser.add_argument("--quick", action="store_true", help="115200 baud and a small backlog: checks the script runs")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    rates = [115200] if args.quick else [int(r) for r in args.rates.split(",")]
    backlog_s = 1.0 if args.quick else args.backlog_seconds

    @defer.inlineCallbacks
    def run_all(reactor):
        results = []
        with tempfile.TemporaryDirectory(prefix="bus-bench-") as folder:
            for baud in rates:
                print(f"measuring {baud} baud ...", file=sys.stderr, flush=True)
                results.append((yield measure(reactor, baud, args.devices, backlog_s, folder)))
        report(results, args)

    task.react(run_all)  # exits: 0 when every rate was measured, 1 when the run broke down


def report(results: list[dict], args) -> None:
    print(table(results))
    print(f"target: frame time >= {TARGET_FRAME_TIME:.0%} of the line while a backlog exists")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(devices=args.devices, quick=args.quick, target_frame_time_fraction=TARGET_FRAME_TIME,
                           rates=results), f, indent=2)


if __name__ == "__main__":
    main()
