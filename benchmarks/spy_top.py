"""Top frames of a py-spy profile: where the gateway spends its CPU under load.

Reads py-spy's raw (collapsed stack) output, ``py-spy record --nonblocking -f raw -o FILE``, and
prints the frames holding most samples: by own time (the frame on top of the stack) and by
inclusive time (the frame anywhere in the stack), each as a share of all samples.

    py-spy record --nonblocking -p PID -d 20 -f raw -o gateway.txt
    python benchmarks/spy_top.py gateway.txt
"""

import argparse
import re
from collections import Counter

_LINE = re.compile(r"^(.*) (\d+)$")
_IDLE = ("select (selectors.py", "epoll", "poll (selectors.py", "wait (threading.py", "get (queue.py", "_worker (")


def frame_name(frame: str) -> str:
    """``"Pusher._deliver (gateway/sync/pusher.py:97)"`` -> ``"Pusher._deliver (gateway/sync/pusher.py)"``: one entry per function."""
    return re.sub(r":\d+\)$", ")", frame.strip())


def read_stacks(path: str) -> Counter:
    stacks: Counter = Counter()
    with open(path) as f:
        for line in f:
            m = _LINE.match(line.rstrip("\n"))
            if m:
                stacks[tuple(frame_name(fr) for fr in m.group(1).split(";"))] += int(m.group(2))
    return stacks


def busy(stacks: Counter) -> Counter:
    """Stacks of threads doing work: waiting in the reactor's poll or for a thread pool's task is not."""
    return Counter({s: n for s, n in stacks.items() if not any(s[-1].startswith(idle) for idle in _IDLE)})


def top(stacks: Counter, n: int) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]]]:
    total = sum(stacks.values())
    own: Counter = Counter()
    inclusive: Counter = Counter()
    for stack, count in stacks.items():
        own[stack[-1]] += count
        for frame in set(stack):
            inclusive[frame] += count
    return total, own.most_common(n), inclusive.most_common(n)


# A delivery's phases on the reactor thread, by the innermost frame that names one (docs/loadtest.md, "A lone delivery").
PHASES = (
    ("snapshot for the API process", "SnapshotResource.render_GET"),
    ("reconciliation", "Reconciler."),
    ("event ingest and acknowledgement", "TerminalSession._request_received"),
    ("event ingest and acknowledgement", "TerminalSession._ack_events"),
    ("answer: results, monitoring rows, cursor", "Pusher._commit_cursor_moves.<locals>.settle"),
    ("answer: results, monitoring rows, cursor", "Pusher._acknowledged"),
    ("push: feed read handed out, PUT_USERS out", "Pusher._deliver"),
    ("push: feed read handed out, PUT_USERS out", "Pusher._feed_read"),
    ("push: feed read handed out, PUT_USERS out", "Pusher.kick"),
    ("frames in (decode, match to the request, parse)", "TerminalSession._answered"),
    ("pulls", "Puller."),
    ("group commits: hand-off and completion", "EventLog._committed"),
    ("group commits: hand-off and completion", "Database.write"),
    ("group commits: hand-off and completion", "Database.read"),
    ("frames in (decode, match to the request, parse)", "TcpLink.dataReceived"),
    ("socket writes and thread wake-ups", "untilConcludes"),
    ("log lines", "Logger.emit"),
)


def phases(stacks: Counter) -> Counter:
    """Busy samples of the reactor thread by phase; everything else (timers, Twisted) is "other"."""
    found: Counter = Counter()
    for stack, count in stacks.items():
        if not any(f.startswith("ReactorBase.mainLoop") for f in stack) or stack[-1].startswith("EPollReactor.doPoll"):
            continue  # the database threads; the reactor waiting in epoll
        names = (next((phase for phase, prefix in PHASES if frame.startswith(prefix)), None) for frame in reversed(stack))
        found[next((name for name in names if name), "other (timers, Twisted)")] += count
    return found


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("raw", help="py-spy record -f raw output")
    p.add_argument("-n", type=int, default=12, help="frames to show (default 12)")
    p.add_argument("--all", action="store_true", help="count idle samples too (threads waiting)")
    p.add_argument("--phases", action="store_true", help="the reactor thread's busy samples by phase of a delivery")
    args = p.parse_args(argv)
    stacks = read_stacks(args.raw)
    if not args.all:
        stacks = busy(stacks)
    if args.phases:
        found = phases(stacks)
        print(f"{sum(found.values())} busy samples of the reactor thread")
        for phase, count in found.most_common():
            print(f"{count:6d}  {phase}")
        return 0
    total, own, inclusive = top(stacks, args.n)
    print(f"{total} busy samples")
    for title, rows in (("own time", own), ("inclusive time", inclusive)):
        print(f"-- {title}")
        for frame, count in rows:
            print(f"{100 * count / total:5.1f}%  {frame}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
