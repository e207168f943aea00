"""gateway-loadtest --kind push: a gateway with ``[push]`` and a station of emulated PUSH devices.

Order of a run: the gateway starts (``[push]`` on loopback, admission open, the devices' default
``Delay`` of 10 s); the API is timed with nobody calling (``idle``); the station's devices
(simulator/push/station.py, in this process) call in, their first calls spread over one
``Delay``; once every one is talking, a phase of them only calling at their interval,
nothing changing (``--idle-cycles`` Delays), while the gateway's CPU is read and the API timed again (``calling``): what
a fleet of PUSH devices costs by itself, per device; then for ``--duration`` the devices punch
``--rate`` times a second in all, every tenth action an enrolment instead, while the API is timed
(``loaded``); the station settles (every enrolment at every other device, every punch
acknowledged), and the gateway's database says how many punches it stored. The API is timed on
``GET /api/sync``, whose answer does not grow with the fleet, so what changes is the load alone.
"""

import random
import re
import time
from pathlib import Path

from sqlalchemy import create_engine, func, select
from twisted.internet import defer, task, threads

from gateway.store.schema import events
from protocol.events import EventCode
from protocol.figures import percentiles
from simulator.push.station import PushStation, pause, until
from tools.loadtest.api_probe import ApiProbe
from tools.loadtest.gateway_process import GatewayFailed, GatewayProcess

DELAY_S = 10  # what a PUSH device is given when the gateway's [push] says nothing (docs/zk-push.md)
API_PATH = "/api/sync"
_PUSH_BOUND = re.compile(rb"listening for PUSH devices on (http://\S+)/iclock/")


def run(args, run_dir: Path, delay_s: int = DELAY_S) -> dict:
    """One run; the report (docs/loadtest.md, "PUSH devices"). ``delay_s``: the devices' Delay
    (shorter for a quick check of the harness itself)."""
    db_url = args.db or f"sqlite:///{run_dir / 'gateway.db'}"
    config = run_dir / "gateway.toml"
    config.write_text('tcp_host = "127.0.0.1"\nadmission = "open"\ndefault_secret = "loadtest-secret"\n'
                      f'sync_mode = "all-with-device-updates"\n[push]\nhost = "127.0.0.1"\nport = 0\ndelay_s = {delay_s}\n')
    gateway = GatewayProcess(run_dir, db_url, config_file=config).start()
    figures: dict = {}
    try:
        found = _PUSH_BOUND.search(gateway.log_path.read_bytes())
        if found is None:
            raise GatewayFailed(f"the gateway did not say where it listens for PUSH devices; see {gateway.log_path}")
        probe = ApiProbe(gateway.http_port, path=API_PATH)
        probe.sample(5)  # a gateway just started answers its first requests slowly: not what idle means
        figures["api_idle"] = probe.sample(30)
        figures["rss_empty_mb"] = gateway.memory_mb()  # warm: its API process has answered
        _react(lambda reactor: _drive(reactor, args, delay_s, found[1].decode(), gateway, probe, figures))
        figures["peak_rss_mb"] = gateway.memory_mb("VmHWM")
    finally:
        gateway.stop()
    engine = create_engine(db_url)
    with engine.connect() as conn:
        stored = conn.execute(select(func.count()).where(events.c.code == int(EventCode.VERIFY_SUCCESS),
                                                         events.c.terminal_event_id.is_not(None))).scalar()
    engine.dispose()
    return _report(args, figures, stored, run_dir)


def _react(main) -> None:
    """``task.react``, which ends the process when ``main`` is done: here the run goes on (the
    database is read, the report written), and an error of ``main`` is raised here."""
    failures = []
    try:
        task.react(lambda reactor: main(reactor).addErrback(failures.append))
    except SystemExit:
        pass
    if failures:
        failures[0].raiseException()


@defer.inlineCallbacks
def _drive(reactor, args, delay_s: int, push_url: str, gateway: GatewayProcess, probe: ApiProbe, figures: dict):
    figures["delay_s"] = delay_s
    station = PushStation(reactor, push_url, args.devices, prefix="LOAD", spread_s=delay_s)
    figures["station"] = station
    cpu_began = time.process_time()
    station.start()
    try:
        talking = yield until(reactor, lambda: station.talking() == args.devices, 60 + delay_s + args.devices * 0.05)
        if not talking:
            raise GatewayFailed(f"only {station.talking()} of {args.devices} PUSH devices talking after the wait")
        figures["rss_ready_mb"] = gateway.memory_mb()
        yield threads.deferToThread(probe.start)
        cpu = gateway.cpu_s()
        yield pause(reactor, _idle_s(args, delay_s))
        figures["cpu_calling_s"] = gateway.cpu_s() - cpu
        yield threads.deferToThread(probe.stop)
        figures["api_calling"], probe.loaded = [ms for _, ms in probe.loaded], []
        yield threads.deferToThread(probe.start)
        cpu, began = gateway.cpu_s(), time.monotonic()
        yield _act(reactor, station, args.rate or 2.0, args.duration, args.seed)
        figures["cpu_loaded_s"] = gateway.cpu_s() - cpu
        yield threads.deferToThread(probe.stop)
        figures["api_loaded"] = [ms for _, ms in probe.loaded]
        settled = yield until(reactor, lambda: station.settled() and not station.uploads_waiting(), 3 * delay_s + args.drain_timeout)
        figures["settled"], figures["settle_s"] = settled, time.monotonic() - began - args.duration
    finally:
        station.stop()
        figures["station_cpu_s"] = time.process_time() - cpu_began


@defer.inlineCallbacks
def _act(reactor, station: PushStation, rate: float, duration_s: float, seed: int):
    """``rate`` actions a second at devices chosen at random: punches, every tenth an enrolment."""
    chooser, began, n = random.Random(seed), time.monotonic(), 0
    while n < rate * duration_s:
        due = began + n / rate
        if due > time.monotonic():
            yield pause(reactor, due - time.monotonic())
        at = chooser.randrange(len(station.devices))
        if n % 10 == 9:
            station.enrol(at, f"7{n:06d}", f"Person {n}")
        else:
            station.punch(at, str(chooser.randrange(1, 10_000)))
        n += 1


def _idle_s(args, delay_s: int) -> float:
    """The calling-only phase: ``--idle-cycles`` of the devices' Delay."""
    return args.idle_cycles * delay_s


def _rounded(figures: dict | None) -> dict | None:
    return None if figures is None else {k: round(v, 1) for k, v in figures.items()}


def _report(args, figures: dict, stored: int, run_dir: Path) -> dict:
    station: PushStation = figures["station"]
    devices, deliveries = args.devices, station.deliveries_s()
    loaded = figures.get("api_loaded", [])
    idle, calling, under_load = percentiles(figures["api_idle"]), percentiles(figures.get("api_calling", [])), percentiles(loaded)
    api = dict(path=API_PATH, idle_p50=idle["p50"], idle_p99=idle["p99"],
               calling_p50=calling and calling["p50"], calling_p99=calling and calling["p99"],
               p50=under_load and under_load["p50"], p99=under_load and under_load["p99"], samples=len(loaded))
    idle_s = _idle_s(args, figures["delay_s"])
    cpu_calling = figures.get("cpu_calling_s") if idle_s else None
    report = dict(
        devices=devices,
        kind="push",
        delay_s=figures["delay_s"],
        duration_s=args.duration,
        idle_s=idle_s,
        rate=args.rate or 2.0,
        settled=figures.get("settled", False),
        settle_s=round(figures.get("settle_s", 0.0), 1),
        punches=station.punches,
        events_stored=stored,
        events_per_s=round(stored / args.duration, 1),
        enrolled=len(station.enrolments),
        user_deliveries=len(deliveries),
        user_deliveries_per_s=round(len(deliveries) / args.duration, 1),
        propagation_ms=_rounded(percentiles(s * 1000 for s in deliveries)),
        lost_events=max(0, station.punches - stored),
        lost_updates=station.never_arrived(),
        api_ms={k: round(v, 1) if isinstance(v, float) else v for k, v in api.items()},
        # One core is 100 %: what the gateway spent while the devices only called at their interval.
        gateway_cpu_pct_per_device_calling=None if cpu_calling is None else round(cpu_calling / idle_s / devices * 100, 4),
        gateway_cpu_s_calling=None if cpu_calling is None else round(cpu_calling, 2),
        gateway_cpu_s_loaded=round(figures.get("cpu_loaded_s", 0.0), 2),
        gateway_rss_per_device_kb=round((figures.get("rss_ready_mb", figures["rss_empty_mb"]) - figures["rss_empty_mb"]) * 1024 / devices, 1),
        gateway_peak_rss_mb=round(figures["peak_rss_mb"], 1),
        # With no device and with every one talking: two runs of different sizes give the cost of one more device.
        gateway_rss_empty_mb=round(figures["rss_empty_mb"], 1),
        gateway_rss_ready_mb=None if "rss_ready_mb" not in figures else round(figures["rss_ready_mb"], 1),
        station_cpu_s=round(figures["station_cpu_s"], 1),  # the devices' process: is it the bottleneck?
        run_folder=str(run_dir),
    )
    report["ok"] = report["settled"] and not report["lost_events"] and not report["lost_updates"]
    return report


def table(report: dict) -> str:
    api, propagation = report["api_ms"], report["propagation_ms"] or {}
    rows = [
        ("PUSH devices", f"{report['devices']:,} calling every {report['delay_s']} s"),
        ("gateway CPU per device, calling", f"{report['gateway_cpu_pct_per_device_calling']} % of a core"),
        ("gateway memory per device", f"{report['gateway_rss_per_device_kb']} kB (peak {report['gateway_peak_rss_mb']} MiB)"),
        (f"API {api['path']} p50 / p99", f"idle {api['idle_p50']} / {api['idle_p99']} ms, calling {api['calling_p50']} / "
                                         f"{api['calling_p99']} ms, loaded {api['p50']} / {api['p99']} ms"),
        ("punches stored", f"{report['events_stored']:,} of {report['punches']:,} ({report['events_per_s']}/s)"),
        ("propagation p50 / p99 / max", f"{propagation.get('p50')} / {propagation.get('p99')} / {propagation.get('max')} ms"),
        ("lost", f"{report['lost_events']} events, {report['lost_updates']} updates"),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    lines.append("converged" if report["ok"] else "FAILED: " + ("did not settle" if not report["settled"] else "something was lost"))
    return "\n".join(lines)
