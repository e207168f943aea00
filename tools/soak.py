"""gateway-soak: a long run of mixed load with faults, judged by what was lost, and the gateway's
memory over time (``make soak``; not part of ``make test``).

A simulated fleet runs the ``churn`` scenario (enrolments, edits, people at doors; a fifth of
the terminals drop off the network and come back, over and over) against a real ``gateway
run`` on SQLite, while a schedule of faults runs beside it: the gateway is killed with SIGKILL
and started again (same ports, same database), and the database is made unavailable for a
while (an exclusive lock held on the SQLite file, so every commit of the gateway fails). Then
the fleet settles and the load test's convergence check compares every terminal's dumped store
and log with the database: lost, duplicated and diverged must all be 0.

The gateway's RSS is sampled from /proc every few seconds; the report prints it per gateway
life (from one start to the next kill) and ``--plot`` draws it with the faults marked.
"""

import argparse
import importlib.util
import json
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sqlalchemy import create_engine

from simulator.fleet import Fleet, FleetError, FleetSpec
from tools.loadtest import convergence
from tools.loadtest.gateway_process import GatewayFailed, GatewayProcess
from tools.loadtest.harness import caught_up
from tools.loadtest.report import PLOT_HINT

SECRET = "soak-secret"
SAMPLE_EVERY_S = 5.0


@dataclass(frozen=True)
class Fault:
    at_s: float  # seconds after the load started
    kind: str  # "sigkill" or "db-outage"
    length_s: float = 0.0


def schedule(duration_s: float, kills: int, outage_s: float) -> list[Fault]:
    """The faults of a run, spread over its middle: kills evenly, the outage between the first
    two, so each is followed by enough load to see the gateway recover."""
    faults = [Fault(duration_s * (n + 1) / (kills + 1), "sigkill") for n in range(kills)]
    outage_at = duration_s / (2 * (kills + 1)) if kills else duration_s / 3
    faults.append(Fault(outage_at, "db-outage", min(outage_s, duration_s / 4)))
    return sorted(faults, key=lambda f: f.at_s)


@dataclass
class Chaos:
    """Runs the faults on a thread and samples the gateway's memory meanwhile."""

    gateway: GatewayProcess
    db_file: Path
    faults: list[Fault]
    rss: list[tuple[float, float]] = field(default_factory=list)  # (seconds since start, MiB)
    done: list[tuple[float, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def start(self, started: float) -> None:
        self._started, self._stop = started, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(120)

    def _run(self) -> None:
        pending = list(self.faults)
        while not self._stop.is_set():
            now = time.time() - self._started
            if pending and now >= pending[0].at_s:
                self._inflict(pending.pop(0))
                continue
            self._sample(now)
            self._stop.wait(SAMPLE_EVERY_S if not pending else min(SAMPLE_EVERY_S, max(0.0, pending[0].at_s - now)))

    def _sample(self, now: float) -> None:
        try:
            self.rss.append((now, self.gateway.memory_mb()))
        except (OSError, GatewayFailed):
            pass  # between a kill and the next start

    def _inflict(self, fault: Fault) -> None:
        at = time.time() - self._started
        try:
            if fault.kind == "sigkill":
                self.gateway.kill()
                self.gateway.spawn()
                deadline = time.monotonic() + 60
                while not self.gateway.listening():
                    if time.monotonic() > deadline:
                        raise GatewayFailed("the gateway did not come back within 60 s of its SIGKILL")
                    time.sleep(0.05)
            else:
                self._lock_database(fault.length_s)
        except (GatewayFailed, sqlite3.Error) as exc:
            self.errors.append(f"{fault.kind} at {at:.0f} s: {exc}")
        self.done.append((at, fault.kind))
        print(f"soak: {fault.kind} at {at:.0f} s" + (f" for {fault.length_s:g} s" if fault.length_s else ""), file=sys.stderr)

    def _lock_database(self, seconds: float) -> None:
        """Hold an exclusive transaction on the database: every commit of the gateway fails meanwhile."""
        conn = sqlite3.connect(self.db_file, timeout=30)
        try:
            conn.execute("BEGIN EXCLUSIVE")
            self._stop.wait(seconds)
            conn.rollback()
        finally:
            conn.close()


def lives(rss: list[tuple[float, float]], kills: list[float]) -> list[dict]:
    """The RSS samples cut at each kill: one summary per life of the gateway process."""
    cuts = [0.0, *kills, float("inf")]
    found = []
    for start, end in zip(cuts, cuts[1:]):
        part = [mb for at, mb in rss if start <= at < end]
        if part:
            found.append(dict(from_s=round(start), samples=len(part), first_mb=round(part[0], 1),
                              max_mb=round(max(part), 1), last_mb=round(part[-1], 1)))
    return found


def plot(path: str, rss: list[tuple[float, float]], done: list[tuple[float, str]], faults: list[Fault]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit(PLOT_HINT) from None
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.plot([at / 60 for at, _ in rss], [mb for _, mb in rss], marker=".", linestyle="-", linewidth=1)
    for at, kind in done:
        if kind == "sigkill":
            ax.axvline(at / 60, color="red", linestyle="--", linewidth=1)
    for fault in faults:
        if fault.kind == "db-outage":
            ax.axvspan(fault.at_s / 60, (fault.at_s + fault.length_s) / 60, color="orange", alpha=0.3)
    ax.set_xlabel("minutes (red: gateway SIGKILL and restart; orange: database unavailable)")
    ax.set_ylabel("gateway RSS (MiB)")
    ax.set_ylim(bottom=0)
    ax.set_title("gateway-soak: gateway memory over time")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gateway-soak", description="A long run of mixed load with gateway SIGKILLs and a "
                                "database outage; prints lost / duplicated / diverged and the gateway's memory over time.")
    p.add_argument("--minutes", type=float, default=30.0, help="minutes of load (default 30; make soak reads SOAK_MINUTES)")
    p.add_argument("--devices", type=int, default=50, metavar="N", help="simulated terminals (default 50)")
    p.add_argument("--rate", type=float, default=50.0, help="action units a second across the fleet (default 50)")
    p.add_argument("--kills", type=int, default=2, help="gateway SIGKILLs, spread over the run (default 2)")
    p.add_argument("--outage", type=float, default=20.0, metavar="SEC", help="length of the database outage (default 20)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="FILE", default="soak-report.json", help="report path (default %(default)s)")
    p.add_argument("--plot", metavar="FILE.png", help="plot the gateway's RSS over time (needs matplotlib: the plot extra)")
    p.add_argument("--run-dir", metavar="DIR", help="folder for the database, dumps and logs (default: a new temporary one)")
    return p


def run(args, run_dir: Path) -> dict:
    duration = args.minutes * 60
    db_file = run_dir / "gateway.db"
    spec = FleetSpec(devices=args.devices, scenario="churn", seed=args.seed, duration=duration, rate=args.rate,
                     secret=SECRET, dump=str(run_dir / "dump"), drain_timeout=300)
    gateway = GatewayProcess(run_dir, f"sqlite:///{db_file}", secret=SECRET).start()
    engine = create_engine(f"sqlite:///{db_file}")
    faults = schedule(duration, args.kills, args.outage)
    chaos = Chaos(gateway, db_file, faults)
    spec.gateway = f"127.0.0.1:{gateway.tcp_port}"
    try:
        with open(run_dir / "fleet.log", "ab") as log:
            fleet = Fleet(spec, log_file=log).run(on_ready=lambda: chaos.start(time.time() + 0.5),
                                                  settled=lambda: caught_up(engine, spec.terminal_ids))
    finally:
        chaos.stop()
        gateway.stop()
    checked = convergence.check(engine, Path(spec.dump), spec.terminal_ids)
    engine.dispose()
    kills = [at for at, kind in chaos.done if kind == "sigkill"]
    return dict(
        minutes=args.minutes, devices=args.devices, scenario="churn", rate=args.rate, seed=args.seed,
        faults=[asdict(f) for f in faults], fault_errors=chaos.errors, settled=fleet.settled, settle_s=round(fleet.settle_s, 1),
        events_produced=checked.events_produced, events_stored=checked.events_stored, server_users=checked.server_users,
        enrolled=len(fleet.propagation), user_deliveries=fleet.deliveries,
        lost_events=checked.lost_events, duplicate_events=checked.duplicate_events,
        diverged_terminals=checked.diverged_terminals, lost_updates=checked.lost_updates,
        rss_by_life=lives(chaos.rss, kills), rss_samples=[(round(at, 1), round(mb, 1)) for at, mb in chaos.rss],
        problems=checked.examples, ok=checked.ok and fleet.settled and not chaos.errors,
        _plot=(chaos.rss, chaos.done, faults),
    )


def table(report: dict) -> str:
    rows = [
        ("load", f"{report['minutes']:g} min of churn, {report['devices']} terminals, {report['rate']:g}/s"),
        ("faults", ", ".join(f"{f['kind']} at {f['at_s']:.0f} s" + (f" ({f['length_s']:g} s)" if f["length_s"] else "")
                             for f in report["faults"])),
        ("events produced / stored", f"{report['events_produced']:,} / {report['events_stored']:,}"),
        ("users on the server", f"{report['server_users']:,} ({report['enrolled']:,} enrolled at terminals)"),
        ("lost / duplicated events", f"{report['lost_events']} / {report['duplicate_events']}"),
        ("diverged terminals", str(report["diverged_terminals"])),
        ("lost updates", str(report["lost_updates"])),
        ("settled", f"{report['settled']} (after {report['settle_s']:g} s)"),
    ]
    rows += [(f"RSS, life from {life['from_s']} s", f"{life['first_mb']} MiB first, {life['max_mb']} max, {life['last_mb']} last "
              f"({life['samples']} samples)") for life in report["rss_by_life"]]
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    lines += [f"  - {problem}" for problem in [*report["fault_errors"], *report["problems"]]]
    lines.append("converged: nothing lost, duplicated or diverged" if report["ok"] else "FAILED")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        print(f"gateway-soak: {PLOT_HINT}", file=sys.stderr)
        return 2
    run_dir = Path(args.run_dir) if args.run_dir else Path(tempfile.mkdtemp(prefix="gateway-soak-"))
    run_dir.mkdir(parents=True, exist_ok=True)
    print(f"run folder {run_dir}", file=sys.stderr)
    try:
        report = run(args, run_dir)
    except (FleetError, GatewayFailed) as exc:
        print(f"gateway-soak: {exc} (logs in {run_dir})", file=sys.stderr)
        return 1
    drawn = report.pop("_plot")
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if args.plot:
        plot(args.plot, *drawn)
    print(table(report))
    print(f"report written to {args.json}" + (f", plot to {args.plot}" if args.plot else ""))
    if report["ok"] and not args.run_dir:
        shutil.rmtree(run_dir, ignore_errors=True)
    else:
        print(f"run folder kept: {run_dir}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
