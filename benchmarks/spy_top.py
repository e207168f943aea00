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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("raw", help="py-spy record -f raw output")
    p.add_argument("-n", type=int, default=12, help="frames to show (default 12)")
    p.add_argument("--all", action="store_true", help="count idle samples too (threads waiting)")
    args = p.parse_args(argv)
    stacks = read_stacks(args.raw)
    if not args.all:
        stacks = busy(stacks)
    total, own, inclusive = top(stacks, args.n)
    print(f"{total} busy samples")
    for title, rows in (("own time", own), ("inclusive time", inclusive)):
        print(f"-- {title}")
        for frame, count in rows:
            print(f"{100 * count / total:5.1f}%  {frame}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
