"""CPU each thread of a running process used over a window, from /proc (Linux).

py-spy counts a thread waiting in fsync as busy, so its profile of the gateway's writer thread
(SQLite's group commits) overstates that thread's CPU several times over; the kernel's own
count does not. The main thread is the reactor's; the writer is the busiest of the others.

    python benchmarks/thread_cpu.py PID --window 12 [--deliveries-per-s 199]
"""

import argparse
import os
import time


def thread_ticks(pid: int) -> dict[int, int]:
    """Clock ticks (user + system) each thread of ``pid`` has used so far."""
    ticks = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
        except FileNotFoundError:
            continue  # the thread ended meanwhile
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": comm may hold spaces
        ticks[int(tid)] = int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of stat(5)
    return ticks


def used(before: dict[int, int], after: dict[int, int]) -> dict[int, int]:
    """Ticks each thread used between two readings; a thread born meanwhile counts from 0."""
    return {tid: after[tid] - before.get(tid, 0) for tid in after if after[tid] - before.get(tid, 0) > 0}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("pid", type=int)
    p.add_argument("--window", type=float, default=12.0, help="seconds to measure (default 12)")
    p.add_argument("--deliveries-per-s", type=float, help="also print CPU per delivery at this rate")
    args = p.parse_args(argv)
    tick_s = 1 / os.sysconf("SC_CLK_TCK")
    before = thread_ticks(args.pid)
    time.sleep(args.window)
    spent = used(before, thread_ticks(args.pid))
    per = args.deliveries_per_s * args.window if args.deliveries_per_s else None
    for tid, ticks in sorted(spent.items(), key=lambda item: -item[1]):
        name = "main (reactor)" if tid == args.pid else f"thread {tid}"
        line = f"{name:16s} {ticks * tick_s:7.2f} s"
        print(line + (f"  {ticks * tick_s / per * 1e6:6.1f} us per delivery" if per else ""))
    total = sum(spent.values()) * tick_s
    print(f"{'all':16s} {total:7.2f} s" + (f"  {total / per * 1e6:6.1f} us per delivery" if per else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
