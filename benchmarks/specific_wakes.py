"""What a server-side change costs the gateway in sync mode specific, where each change is meant
for a few of its terminals.

``--terminals`` simulated terminals dial in (in this process), terminal i serving access group
i mod ``--groups``; the gateway runs as a child process (tools/loadtest/gateway_process.py),
SQLite in a scratch folder, in ``--mode`` (default specific). After an idle stretch, users are
created through the API, ``--rate`` a second, ``--changes`` of them, each in one group at random,
so each is meant for about terminals/groups of them; the run ends once every user is on every
terminal of its group. It prints the gateway's CPU per change and per delivery, the load's less
the idle stretch's at the same length: the whole gateway's (with its API process, which takes each
POST) and the ingest process's alone (the pushes; the write the API process forwards it too).

    python benchmarks/specific_wakes.py --terminals 200 --groups 20 --rate 5 --changes 100
    PYTHONPATH=/tmp/base python benchmarks/specific_wakes.py ...   # the same, another tree's gateway

Only the child process runs the tree on PYTHONPATH: compare two trees in one sitting, alternating.
"""

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

from twisted.internet import defer, reactor, task, threads

from gateway.admin import ApiClient
from simulator.tcp import DialingTerminal
from simulator.terminal import Terminal
from tools.loadtest.gateway_process import GatewayProcess

TOKEN = "bench-token"
SECRET = "bench-secret"


def config(terminals: list[int], groups: int, mode: str) -> str:
    lines = ['tcp_host = "127.0.0.1"', f'api_token = "{TOKEN}"', f'sync_mode = "{mode}"']
    for t in terminals:
        lines += ["", "[[terminals]]", f"id = {t}", f'secret = "{SECRET}"', f"groups = [{t % groups}]"]
    return "\n".join(lines) + "\n"


def cpu_s(gateway: GatewayProcess) -> tuple[float, float]:
    """CPU seconds so far of the whole gateway (with its API process) and of its ingest process alone."""
    fields = Path(f"/proc/{gateway.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return gateway.cpu_s(), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_for(predicate, timeout_s: float, what: str) -> defer.Deferred:
    deadline = time.monotonic() + timeout_s

    def check():
        if predicate():
            loop.stop()
        elif time.monotonic() > deadline:
            loop.stop()
            raise TimeoutError(f"timed out after {timeout_s:g} s waiting for {what}")

    loop = task.LoopingCall(check)
    return loop.start(0.1)


@defer.inlineCallbacks
def run(args, run_dir: Path):
    ids = list(range(1, args.terminals + 1))
    (run_dir / "gateway.toml").write_text(config(ids, args.groups, args.mode))
    gateway = GatewayProcess(run_dir, f"sqlite:///{run_dir / 'gateway.db'}", config_file=run_dir / "gateway.toml")
    gateway.start()
    dialers = []
    try:
        terminals = {t: Terminal(t, SECRET) for t in ids}
        dialers = [DialingTerminal(term, reactor, "127.0.0.1", gateway.tcp_port).start() for term in terminals.values()]
        api = ApiClient(f"http://127.0.0.1:{gateway.http_port}", TOKEN)
        online = lambda: api.call("GET", "/api/terminals")["fleet"]["online"]  # noqa: E731
        yield wait_for(lambda: online() == len(ids), 60, "every terminal online")
        rng = random.Random(4711)
        wanted = {f"u{n}": rng.randrange(args.groups) for n in range(args.changes)}
        spacing_s = 1 / args.rate
        yield task.deferLater(reactor, args.settle_s, lambda: None)  # what connecting starts (a comparison of each) is over
        # The idle stretch: the sweep, keepalives and nothing else, as long as the load will take.
        idle_s = args.changes * spacing_s
        before = cpu_s(gateway)
        yield task.deferLater(reactor, idle_s, lambda: None)
        idle_cpu_s = [a - b for a, b in zip(cpu_s(gateway), before)]
        started, before = time.monotonic(), cpu_s(gateway)
        for user_id, group in wanted.items():
            yield threads.deferToThread(api.call, "POST", "/api/users", body={"user_id": user_id, "access_groups": [group]})
            yield task.deferLater(reactor, max(0.0, started + spacing_s * (1 + int(user_id[1:])) - time.monotonic()), lambda: None)
        meant = {t: {u for u, g in wanted.items() if args.mode != "specific" or g == t % args.groups} for t in ids}
        yield wait_for(lambda: all(meant[t] <= set(terminals[t].users) for t in ids), 120, "every user on the terminals meant")
        took_s = time.monotonic() - started
        load_cpu_s = [a - b for a, b in zip(cpu_s(gateway), before)]
        deliveries = sum(len(users) for users in meant.values())
        figures = dict(mode=args.mode, terminals=args.terminals, groups=args.groups, rate=args.rate, changes=args.changes,
                       deliveries=deliveries, took_s=round(took_s, 1))
        for i, part in enumerate(("gateway", "ingest")):
            net_s = load_cpu_s[i] - idle_cpu_s[i] * took_s / idle_s
            figures[part] = dict(idle_cpu_s=round(idle_cpu_s[i], 2), load_cpu_s=round(load_cpu_s[i], 2),
                                 cpu_per_change_ms=round(net_s / args.changes * 1000, 2), cpu_per_delivery_us=round(net_s / deliveries * 1e6))
        return figures
    finally:
        for dialer in dialers:
            dialer.go_offline()
        gateway.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--terminals", type=int, default=200)
    p.add_argument("--groups", type=int, default=20, help="access groups; terminal i serves group i mod this")
    p.add_argument("--rate", type=float, default=5.0, help="users created a second")
    p.add_argument("--changes", type=int, default=100, help="users created")
    p.add_argument("--mode", default="specific", choices=["specific", "all"])
    p.add_argument("--settle-s", type=float, default=15.0, help="wait this long once every terminal is online")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="specific-wakes-") as folder:
        figures = task.react(lambda _: run(args, Path(folder)).addCallback(lambda f: print(json.dumps(f))))
    return figures


if __name__ == "__main__":
    main()
