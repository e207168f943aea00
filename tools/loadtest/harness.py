"""gateway-loadtest: start a gateway, measure its yardsticks, load it with a fleet, check, report.

Order of a run: the baselines (raw batched insert, bare sink) while nothing else runs; the
fleet's ZK devices listen; the gateway process, configured with their ports; the fleet connects
(idle memory and idle API latency are taken then); the scenario runs while a thread times API
requests; the fleet settles (every change at a ZK device read by the gateway, and the gateway's
database says every pull is merged and every terminal's cursor is at the last change), and the
gateway compares every terminal with its database (reconciliation: anything it has to repair is
something the sync left behind); with ZK devices, an idle phase of a few poll cycles measures what
polling costs when nothing changes; the fleet dumps its terminals; the gateway stops; the
convergence check compares dumps and database.
"""

import argparse
import http.client
import importlib.util
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import create_engine, func, select
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import SQLAlchemyError

from gateway.api_token import token_path
from gateway.store.schema import events, pending_pulls, terminals
from gateway.sync.users import last_change_seq
from protocol.figures import percentiles
from simulator.fleet import Fleet, FleetError, FleetSpec, add_fleet_arguments, propagation_figures, spec_from_args
from simulator.gateway_config import fleet_config
from simulator.progress import ProgressBar
from tools.loadtest import baselines, capacity, convergence, push_load, report as reporting
from tools.loadtest.api_probe import ApiProbe, ApiUnavailable
from tools.loadtest.db_server import DatabaseServer, wal_position
from tools.loadtest.gateway_process import GatewayFailed, GatewayProcess, free_port

SECRET = "loadtest-secret"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gateway-loadtest",
        description="Load a gateway with a simulated fleet, check that nothing was lost, report (docs/loadtest.md).",
    )
    add_fleet_arguments(p)
    p.add_argument("--db", metavar="URL", help="an empty database for the gateway (default: SQLite in the run folder)")
    p.add_argument("--gateways", type=int, default=1, metavar="N",
                   help="gateway processes sharing the terminal port (gateway run --workers N; above 1 needs a PostgreSQL --db)")
    p.add_argument("--listen", action="store_true", help="terminals listen and the gateway dials out to each")
    p.add_argument("--poll-s", type=float, default=2.0, metavar="SEC", help="poll_s of every [[zk]] device (default 2)")
    p.add_argument("--idle-cycles", type=int, default=5, metavar="N",
                   help="with ZK devices: poll cycles of the idle phase that measures polling cost (default 5; 0: none); "
                        "with PUSH devices: Delays of the phase they only call in")
    p.add_argument("--idle-cpu-s", type=float, default=5.0, metavar="SEC",
                   help="seconds the gateway's CPU is measured with the fleet connected and quiet, once it settled (default 5: CPU time comes in 10 ms ticks; 0: not)")
    p.add_argument("--json", metavar="FILE", default="loadtest-report.json", help="report path (default %(default)s)")
    p.add_argument("--plot", metavar="FILE.png", help="plot propagation and API latency over time (needs matplotlib)")
    p.add_argument("--baseline-rows", type=int, default=100_000, metavar="N", help="rows of the raw insert baseline")
    p.add_argument("--sink-seconds", type=float, default=2.0, metavar="SEC", help="length of the bare sink baseline")
    p.add_argument("--drain-timeout", type=float, default=120.0, metavar="SEC",
                   help="longest wait for the fleet to settle after the load (default 120)")
    p.add_argument("--run-dir", metavar="DIR", help="folder for the database, dumps and logs (default: a new temporary one)")
    p.add_argument("--keep", action="store_true", help="keep the temporary run folder even on success")
    p.add_argument("--find-capacity", action="store_true",
                   help="run one load test per rate of --ladder, each for --duration, until p99 propagation passes "
                        "--p99-limit-ms or anything is lost; report the highest rate held")
    p.add_argument("--ladder", type=_ladder, default=capacity.DEFAULT_LADDER, metavar="R1,R2,...",
                   help="offered rates for --find-capacity, rising (default %s)" % ",".join(f"{r:g}" for r in capacity.DEFAULT_LADDER))
    p.add_argument("--whole-ladder", action="store_true",
                   help="with --find-capacity: run every rate of the ladder once, held or not (a table of figures by rate)")
    p.add_argument("--p99-limit-ms", type=float, default=capacity.P99_LIMIT_MS, metavar="MS",
                   help="p99 propagation a step may reach and still hold its rate (default %(default)g)")
    return p


def _ladder(text: str) -> tuple[float, ...]:
    try:
        return capacity.parse_ladder(text)
    except capacity.LadderError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def caught_up(engine: Engine, terminal_ids: list[int]) -> bool:
    """The gateway's own database says it is done: no pull owed, every cursor at the last change."""
    with engine.connect() as conn:
        if conn.execute(select(func.count()).select_from(pending_pulls)).scalar():
            return False
        last = last_change_seq(conn)
        behind = select(func.count()).where(terminals.c.terminal_id.in_(terminal_ids), terminals.c.cursor < last)
        return conn.execute(behind).scalar() == 0


def reconcile_now(port: int, token: str) -> dict:
    """Ask the gateway to compare every online terminal with its database now (POST /api/reconcile)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        conn.request("POST", "/api/reconcile", body=b"{}", headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        answer = conn.getresponse()
        body = answer.read()
    except (OSError, http.client.HTTPException) as exc:
        raise GatewayFailed(f"POST /api/reconcile: {exc}") from None
    finally:
        conn.close()
    if answer.status != 200:
        raise GatewayFailed(f"POST /api/reconcile answered {answer.status}: {body[:200]!r}")
    return json.loads(body)


def reconciliation_figures(found: dict | None) -> dict:
    """What the comparison after settling found: users it repaired (the sync left them behind:
    0 expected) and users left as the rules allow, by why (a keypad delete, ...)."""
    if found is None:
        return dict(reconcile_repaired=None, reconcile_left=None, reconcile_left_why={})
    why: dict[str, int] = {}
    for terminal in found["terminals"]:
        for reason, n in terminal["why"].items():
            why[reason] = why.get(reason, 0) + n
    return dict(reconcile_repaired=found["repaired"], reconcile_left=found["differences"], reconcile_left_why=why)


def ingest(engine: Engine, started_ms: float) -> dict:
    """Terminal events stored since the load started, and over how long they arrived."""
    c = events.c
    with engine.connect() as conn:
        count, last_ms = conn.execute(
            select(func.count(), func.max(c.recorded_ms)).where(c.terminal_event_id.is_not(None), c.recorded_ms >= started_ms)
        ).one()
    window = (last_ms - started_ms) / 1000 if last_ms else None
    return dict(events=count, window_s=window, per_s=count / window if window else None)


class LoadTest:
    def __init__(self, args, run_dir: Path):
        self.args = args
        self.run_dir = run_dir
        self.db_url = args.db or f"sqlite:///{run_dir / 'gateway.db'}"
        self.db_server, self.db_cpu_reason = DatabaseServer.of(self.db_url)
        listen = free_port() if args.listen else 0
        self.spec: FleetSpec = spec_from_args(args, listen=listen, secret=SECRET, dump=str(run_dir / "dump"),
                                              drain_timeout=args.drain_timeout)

    def run(self, base: dict | None = None) -> dict:
        """One load test; ``base``: baselines measured already (a capacity search measures them once)."""
        spec = self.spec
        print(f"run folder {self.run_dir}", file=sys.stderr)
        if base is None:
            base = self.baselines()
        self.gateway: GatewayProcess | None = None
        self.probe: ApiProbe | None = None
        self.idle: dict | None = None
        engine = create_engine(self.db_url)
        try:
            figures = self._load(engine)
        finally:
            if self.gateway is not None:
                self.gateway.stop()
        checked = convergence.check(engine, Path(spec.dump), spec.terminal_ids)
        ingested = ingest(engine, self.fleet.started_ms)
        engine.dispose()
        return self._report(base, figures, checked, ingested)

    def baselines(self) -> dict:
        print("baselines: raw batched insert, bare sink ...", file=sys.stderr)
        return dict(raw_insert=baselines.raw_insert(self.db_url, self.run_dir, self.args.baseline_rows),
                    bare_sink=baselines.bare_sink(self.spec.mix, self.args.sink_seconds))

    def _start_gateway(self, engine: Engine, zk_ports: dict[int, int]) -> str:
        """Once the ZK devices listen: the gateway, configured with them when there are any; the
        address native terminals dial."""
        spec, config = self.spec, None
        if zk_ports or spec.listen:
            config = self.run_dir / "gateway.toml"
            listening = {t: spec.listen + t - spec.first_id for t in spec.native_ids} if spec.listen else None
            config.write_text(fleet_config(secret=SECRET, dial_in=bool(spec.native_ids) and not spec.listen, listening=listening,
                                           zk=zk_ports, comm_key=spec.zk_comm_key, poll_s=self.args.poll_s))
        self.gateway = GatewayProcess(self.run_dir, self.db_url, secret=SECRET, config_file=config, workers=self.args.gateways)
        self.gateway.start()
        self._require_empty(engine)
        return f"127.0.0.1:{self.gateway.tcp_port}"

    def _require_empty(self, engine: Engine) -> None:
        with engine.connect() as conn:
            if conn.execute(select(func.count()).select_from(events)).scalar():
                raise GatewayFailed("the load test needs an empty database: its events table has rows")

    def _load(self, engine: Engine):
        figures = {}

        def start_gateway(zk_ports):
            address = self._start_gateway(engine, zk_ports)
            self.probe = ApiProbe(self.gateway.http_port)
            figures["api_reason"] = self.probe.unavailable_reason()
            # Only once the API has answered: its process imports what it runs for about a second
            # after the ports are bound (80 MiB), which is no terminal's memory.
            figures["rss_empty_mb"] = self.gateway.memory_mb()
            return address

        def ready():
            gateway, probe = self.gateway, self.probe
            figures["rss_ready_mb"] = gateway.memory_mb()
            if figures["api_reason"] is None:
                figures["api_idle"] = probe.sample(30)
                probe.start()
            figures["cpu_ready_s"] = gateway.cpu_s()
            figures["db_ready"] = self._database_sample(engine)

        def settled(fleet):
            figures["cpu_settled_s"] = self.gateway.cpu_s()
            figures["db_settled"] = self._database_sample(engine)
            self.probe.stop()  # the idle phase measures polling alone
            if self.args.idle_cpu_s > 0:  # caught up, nothing asked of it: not even the work that follows connecting
                figures["idle_cpu_per_s"], figures["fleet_idle_cpu_per_s"] = self._idle_cpu_per_s(fleet, self.args.idle_cpu_s)
            # Before the fleet dumps what it holds: anything repaired is something the sync left behind.
            figures["reconciled"] = reconcile_now(self.gateway.http_port, self._api_token())
            if self.spec.zk_ids and self.args.idle_cycles:
                self.idle = self._measure_idle(fleet, bar)

        bar = ProgressBar(sys.stderr, every_s=10)
        with open(self.run_dir / "fleet.log", "ab") as log:
            try:
                self.fleet = Fleet(self.spec, log_file=log).run(
                    on_progress=bar, on_ready=ready, settled=lambda: caught_up(engine, self.spec.terminal_ids),
                    on_listening=start_gateway, on_settled=settled)
            finally:
                bar.close()
                if self.probe is not None:
                    self.probe.stop()
        figures["cpu_load_s"] = figures.get("cpu_settled_s", self.gateway.cpu_s()) - figures["cpu_ready_s"]
        figures.setdefault("db_settled", self._database_sample(engine))
        figures["peak_rss_mb"] = self.gateway.memory_mb("VmHWM")
        return figures

    def _database_sample(self, engine: Engine) -> tuple[float | None, int | None]:
        """The database server's CPU seconds and WAL position now (None where not measured)."""
        return (self.db_server.cpu_s() if self.db_server else None), wal_position(engine)

    def _api_token(self) -> str:
        """The token the gateway made at its first start, kept beside its database or in its working folder."""
        path = token_path(self.db_url)
        return (path if path.is_absolute() else self.run_dir / path).read_text().strip()

    def _idle_cpu_per_s(self, fleet: Fleet, seconds: float) -> tuple[float, float]:
        """The gateway's and the fleet's CPU seconds a second with every terminal connected and
        nothing happening: keepalives, timers, the API process's snapshots (the API probe is
        stopped), the fleet's progress reports. At low rates this is a large part of what a
        delivery costs."""
        cpu_before, fleet_before, started = self.gateway.cpu_s(), fleet.cpu_s(), time.monotonic()
        time.sleep(seconds)
        cpu_after, fleet_after = self.gateway.cpu_s(), fleet.cpu_s()
        elapsed = time.monotonic() - started
        return (cpu_after - cpu_before) / elapsed, (fleet_after - fleet_before) / elapsed

    def _measure_idle(self, fleet: Fleet, on_progress) -> dict:
        """A few poll cycles with nothing changing: what the gateway spends, per device and cycle,
        to find that nothing changed (its CPU; the bytes and requests the devices saw)."""
        poll_s = self.args.poll_s
        cpu_before = self.gateway.cpu_s()
        traffic = fleet.measure_idle(self.args.idle_cycles * poll_s, on_progress)
        cpu_s = self.gateway.cpu_s() - cpu_before
        cycles = traffic["seconds"] / poll_s
        per = traffic["zk_devices"] * cycles
        return dict(
            seconds=traffic["seconds"],
            cycles=round(cycles, 2),
            gateway_cpu_ms_per_device_per_cycle=round(cpu_s * 1000 / per, 3),
            bytes_per_device_per_cycle=round(traffic["zk_bytes"] / per, 1),
            requests_per_device_per_cycle=round(traffic["zk_requests"] / per, 2),
            writes=traffic["zk_writes"],
            deliveries=traffic["deliveries"],
        )

    def _report(self, base: dict, figures: dict, checked, ingested: dict) -> dict:
        spec, fleet, probe = self.spec, self.fleet, self.probe
        steady, incomplete = propagation_figures(fleet.propagation)
        everyone, incomplete_all = propagation_figures(fleet.propagation, steady=False)
        delivery_window = (fleet.last_delivery_ms - fleet.started_ms) / 1000
        deliveries_per_s = fleet.deliveries / delivery_window if fleet.deliveries and delivery_window > 0 else None
        api = None
        if figures["api_reason"] is None:
            idle = percentiles(figures["api_idle"])
            loaded = percentiles([ms for _, ms in probe.loaded]) or {}
            api = dict(p50=loaded.get("p50"), p99=loaded.get("p99"), idle_p50=idle["p50"], idle_p99=idle["p99"],
                       samples=len(probe.loaded), failures=len(probe.failures), path="/api/terminals")
            api = {k: round(v, 1) if isinstance(v, float) else v for k, v in api.items()}
        report = dict(
            devices=spec.devices,
            kind=spec.kind,
            workers=fleet.workers,
            scenario=spec.scenario,
            seed=spec.seed,
            rate=spec.effective_rate,
            mix=spec.mix,
            database=self.db_url.split(":", 1)[0].split("+")[0],
            duration_s=spec.duration,
            settled=fleet.settled,
            settle_s=fleet.settle_s,
            events_stored=ingested["events"],
            events_per_s=_round(ingested["per_s"]),
            user_deliveries=fleet.deliveries,
            user_deliveries_per_s=_round(deliveries_per_s),
            enrolled=len(fleet.propagation),
            propagation_ms=steady,
            propagation_incomplete=incomplete,
            propagation_all_ms=everyone,
            propagation_all_incomplete=incomplete_all,
            steady_terminals=fleet.steady,
            api_ms=api,
            api_ms_reason=figures["api_reason"],
            gateway_cpu_s=round(figures["cpu_load_s"], 2),
            # A delivery is one user record applied by one terminal; the CPU includes storing events and pulling.
            gateway_cpu_us_per_delivery=_round(figures["cpu_load_s"] * 1e6 / fleet.deliveries if fleet.deliveries else None),
            gateway_idle_cpu_us_per_terminal_s=_round(figures["idle_cpu_per_s"] * 1e6 / spec.devices if "idle_cpu_per_s" in figures else None),
            **self._database_figures(figures, fleet.deliveries),
            fleet_cpu_s=fleet.cpu_s,
            fleet_cpu_us_per_delivery=_round(fleet.cpu_s * 1e6 / fleet.deliveries if fleet.deliveries else None),
            fleet_idle_cpu_us_per_terminal_s=_round(figures["fleet_idle_cpu_per_s"] * 1e6 / spec.devices if "fleet_idle_cpu_per_s" in figures else None),
            gateway_peak_rss_mb=round(figures["peak_rss_mb"], 1),
            gateway_idle_rss_per_terminal_kb=round((figures["rss_ready_mb"] - figures["rss_empty_mb"]) * 1024 / spec.devices, 1),
            lost_events=checked.lost_events,
            duplicate_events=checked.duplicate_events,
            unexpected_events=checked.unexpected_events,
            lost_updates=checked.lost_updates,
            diverged_terminals=checked.diverged_terminals,
            **reconciliation_figures(figures.get("reconciled")),
            missing_deliveries=checked.missing_deliveries,
            stale_records=checked.stale_records,
            deleted_before_pull=checked.deleted_before_pull,
            server_users=checked.server_users,
            dropped_on_purpose=fleet.dropped,
            garbage_writes=fleet.garbage_sent,
            baselines=base,
            ingest_vs_raw_insert=reporting.ratio(ingested["per_s"], base["raw_insert"]["rows_per_s"]),
            deliveries_vs_bare_sink=reporting.ratio(deliveries_per_s, base["bare_sink"]["frames_per_s"]),
            problems=checked.examples,
            run_folder=str(self.run_dir),
            zk=self._zk_figures(),
        )
        report["ok"] = checked.ok and fleet.settled and not report["reconcile_repaired"]
        return report


    def _database_figures(self, figures: dict, deliveries: int) -> dict:
        """The database server's CPU and WAL over the same window as ``gateway_cpu_s``, and per delivery."""
        (cpu_before, wal_before), (cpu_after, wal_after) = figures["db_ready"], figures["db_settled"]
        cpu_s = None if cpu_before is None else cpu_after - cpu_before
        wal = None if wal_before is None else wal_after - wal_before
        return dict(
            database_cpu_s=_round(cpu_s),
            database_cpu_us_per_delivery=_round(cpu_s * 1e6 / deliveries if cpu_s is not None and deliveries else None),
            database_cpu_reason=self.db_cpu_reason if cpu_s is None else None,
            database_wal_bytes=wal,
            database_wal_bytes_per_delivery=_round(wal / deliveries if wal is not None and deliveries else None),
        )

    def _zk_figures(self) -> dict | None:
        """What ZK devices add: how fast an enrolment at one reaches every other steady terminal,
        and what polling costs when nothing changes (``None`` without ZK devices)."""
        spec = self.spec
        if not spec.zk_ids:
            return None
        propagation, incomplete = propagation_figures(self.fleet.propagation, origins=set(spec.zk_ids))
        return dict(devices=len(spec.zk_ids), poll_s=self.args.poll_s, comm_key=spec.zk_comm_key,
                    enrolled=len([p for p in self.fleet.propagation if p.terminal_id in spec.zk_ids]),
                    propagation_ms=propagation, propagation_incomplete=incomplete, idle=self.idle)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.gateways < 1 or (args.gateways > 1 and not (args.db or "").startswith("postgresql")):
        parser.error("--gateways N: N from 1, and above 1 only with --db postgresql://... (SQLite takes one writing process)")
    if args.kind == "push" and (args.find_capacity or args.gateways > 1 or args.listen or args.plot):
        parser.error("--kind push runs one gateway process and its own phases: no --find-capacity, --gateways, --listen or --plot")
    if args.plot and importlib.util.find_spec("matplotlib") is None:  # fail before a long run, not after it
        print(f"gateway-loadtest: {reporting.PLOT_HINT}", file=sys.stderr)
        return 2
    if args.run_dir:
        run_dir = Path(args.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
    else:
        run_dir = Path(tempfile.mkdtemp(prefix="gateway-loadtest-"))
    if args.find_capacity:
        return find_capacity(args, run_dir)
    if args.kind == "push":
        return _push(args, run_dir)
    test = LoadTest(args, run_dir)
    try:
        report = test.run()
    except (FleetError, GatewayFailed, ApiUnavailable) as exc:
        print(f"gateway-loadtest: {exc} (logs in {run_dir})", file=sys.stderr)
        return 1
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if args.plot:
        reporting.plot(args.plot, test.fleet.propagation, test.probe.loaded, test.fleet.started_ms)
    print(reporting.table(report))
    print(f"report written to {args.json}" + (f", plot to {args.plot}" if args.plot else ""))
    if report["ok"] and not (args.keep or args.run_dir):
        shutil.rmtree(run_dir, ignore_errors=True)
    else:
        print(f"run folder kept: {run_dir}")
    return 0 if report["ok"] else 1


def _push(args, run_dir: Path) -> int:
    """``--kind push``: tools/loadtest/push_load.py runs it; the report is written and shown as for the others."""
    try:
        report = push_load.run(args, run_dir)
    except (GatewayFailed, ApiUnavailable) as exc:
        print(f"gateway-loadtest: {exc} (logs in {run_dir})", file=sys.stderr)
        return 1
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(push_load.table(report))
    print(f"report written to {args.json}; run folder {run_dir}")
    return 0 if report["ok"] else 1


def step_database(url: str, step: str) -> str:
    """A new, empty database beside ``url``'s for one step of a capacity search on a server
    (``gateway_rate_20`` beside ``gateway``): each step's gateway starts from nothing."""
    server = make_url(url)
    name = f"{server.database}_{step}".replace("-", "_").replace(".", "_")
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except SQLAlchemyError as exc:
        raise GatewayFailed(f"cannot make the step's database {name}: {str(exc).splitlines()[0]}") from None
    finally:
        admin.dispose()
    return server.set(database=name).render_as_string(hide_password=False)


def find_capacity(args, run_dir: Path) -> int:
    """One load test per rate of the ladder, each in its own folder, until one does not hold."""
    base: dict | None = None
    runs: dict[float, int] = {}  # rate -> runs so far: a step repeated gets a folder (and an empty database) of its own

    def run_step(rate: float) -> dict:
        nonlocal base
        runs[rate] = runs.get(rate, 0) + 1
        folder = run_dir / (f"rate-{rate:g}" if runs[rate] == 1 else f"rate-{rate:g}-run{runs[rate]}")
        folder.mkdir(parents=True, exist_ok=True)
        on_server = args.db and not args.db.startswith("sqlite")
        db = step_database(args.db, folder.name) if on_server else None  # None: SQLite in the step's folder
        step = LoadTest(argparse.Namespace(**{**vars(args), "rate": rate, "db": db}), folder)
        if base is None:
            base = step.baselines()
        print(f"capacity: offering {rate:g}/s for {args.duration:g} s", file=sys.stderr)
        return step.run(base)

    def said(step: capacity.Step) -> None:
        s = step.summary()
        print(f"capacity: {step.rate:g}/s {'held' if step.held else 'not held: ' + step.why_not}; "
              f"{s['user_deliveries_per_s']} deliveries/s, p99 {s['propagation_p99_ms']} ms, "
              f"{s['gateway_cpu_us_per_delivery']} us CPU per delivery", file=sys.stderr)

    try:
        steps = capacity.find_capacity(args.ladder, run_step, args.p99_limit_ms, on_step=said, whole=args.whole_ladder)
    except (FleetError, GatewayFailed, ApiUnavailable) as exc:
        print(f"gateway-loadtest: {exc} (logs in {run_dir})", file=sys.stderr)
        return 1
    found = capacity.capacity_report(steps, args.p99_limit_ms)
    Path(args.json).write_text(json.dumps(found, indent=2) + "\n")
    print(capacity.capacity_table(found))
    print(f"report written to {args.json}")
    # Stopping at a step that lost or diverged anything is a fault, not a measurement.
    ok = found["capacity"] is not None and all(s.report["ok"] for s in steps)
    if ok and not (args.keep or args.run_dir):
        shutil.rmtree(run_dir, ignore_errors=True)
    else:
        print(f"run folder kept: {run_dir}")
    return 0 if ok else 1
