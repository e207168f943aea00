"""The load test's report: JSON keys (docs/loadtest.md explains each), a table, and a plot."""

import time

from tools.loadtest.convergence import LOSS_KEYS, REPAIR_KEY

PLOT_HINT = "--plot needs matplotlib: pip install 'terminal-gateway[plot]'"


def ratio(part: float | None, whole: float | None) -> float | None:
    return round(part / whole, 3) if part is not None and whole else None


def verdict(report: dict) -> str:
    losses = [k for k in (*LOSS_KEYS, REPAIR_KEY) if report.get(k)]
    if losses:
        return "FAILED: " + ", ".join(f"{k} {report[k]}" for k in losses)
    if not report["settled"]:
        return "FAILED: the fleet did not settle within the drain timeout"
    return "converged: every event stored once, every terminal holds the server's records"


def table(report: dict) -> str:
    def show(value, unit=""):
        if value is None:
            return "-"
        if isinstance(value, float):
            value = f"{value:,.1f}" if value < 1000 else f"{value:,.0f}"
        elif isinstance(value, int):
            value = f"{value:,}"
        return f"{value}{unit}"

    def show_ratio(value):
        return "-" if value is None else f"{value:.3f}"

    prop, api, base = report["propagation_ms"] or {}, report["api_ms"] or {}, report["baselines"]
    rows = [
        ("devices / workers", f"{report['devices']} {report['kind']} / {report['workers']}"),
        ("scenario, seed, rate", f"{report['scenario']}, {report['seed']}, {report['rate']:g}/s"),
        ("database", report["database"]),
        ("load, then settling", f"{report['duration_s']:g} s, then {report['settle_s']:g} s"),
        ("events stored", show(report["events_stored"])),
        ("events/s (ingest)", show(report["events_per_s"])),
        ("  raw batched insert", show(base["raw_insert"]["rows_per_s"], " rows/s")),
        ("  one commit per row", show(base["raw_insert"]["one_commit_per_row_rows_per_s"], " rows/s")),
        ("  ingest / raw insert", show_ratio(report["ingest_vs_raw_insert"])),
        ("user deliveries/s", show(report["user_deliveries_per_s"])),
        ("  bare sink", show(base["bare_sink"]["frames_per_s"], f" frames/s of {base['bare_sink']['frame_bytes']} B")),
        ("  deliveries / sink", show_ratio(report["deliveries_vs_bare_sink"])),
        ("enrolled during the run", show(report["enrolled"])),
        ("propagation p50/p95/p99/max", " / ".join(show(prop.get(k), " ms") for k in ("p50", "p95", "p99", "max"))),
        ("  never complete", show(report["propagation_incomplete"])),
        ("API p50/p99 loaded", " / ".join(show(api.get(k), " ms") for k in ("p50", "p99")) if api else report["api_ms_reason"]),
        ("API p50/p99 idle", " / ".join(show(api.get(k), " ms") for k in ("idle_p50", "idle_p99")) if api else "-"),
        ("gateway CPU / fleet CPU", f"{show(report['gateway_cpu_s'], ' s')} / {show(report['fleet_cpu_s'], ' s')}"),
        ("  gateway CPU per delivery", show(report.get("gateway_cpu_us_per_delivery"), " us")),
        ("  idle, per terminal", show(report.get("gateway_idle_cpu_us_per_terminal_s"), " us CPU/s")),
        ("  fleet CPU per delivery", show(report.get("fleet_cpu_us_per_delivery"), " us")),
        ("  fleet idle, per terminal", show(report.get("fleet_idle_cpu_us_per_terminal_s"), " us CPU/s")),
        ("database CPU per delivery", show(report.get("database_cpu_us_per_delivery"), " us")
            if report.get("database_cpu_reason") is None else report["database_cpu_reason"]),
        ("  WAL per delivery", show(report.get("database_wal_bytes_per_delivery"), " B")),
        ("gateway peak RSS", show(report["gateway_peak_rss_mb"], " MiB")),
        ("  idle, per terminal", show(report["gateway_idle_rss_per_terminal_kb"], " KiB")),
        ("lost / duplicate events", f"{report['lost_events']} / {report['duplicate_events']}"),
        ("lost updates", show(report["lost_updates"])),
        ("diverged terminals", show(report["diverged_terminals"])),
        ("reconciliation: repaired", show(report.get("reconcile_repaired"))),
        ("  left as the rules allow", show(report.get("reconcile_left")) + "".join(
            f"; {n} {why}" for why, n in sorted((report.get("reconcile_left_why") or {}).items()))),
    ]
    if report["zk"]:
        zk = report["zk"]
        zk_prop, idle = zk["propagation_ms"] or {}, zk["idle"] or {}
        rows += [
            ("ZK devices, poll_s", f"{zk['devices']}, {zk['poll_s']:g} s"),
            ("  enrolled at ZK devices", show(zk["enrolled"])),
            ("  to every steady p50/p99", " / ".join(show(zk_prop.get(k), " ms") for k in ("p50", "p99"))),
            ("  idle poll cycle, per device", "-" if not idle else
                f"{idle['gateway_cpu_ms_per_device_per_cycle']:.3f} ms gateway CPU, {idle['bytes_per_device_per_cycle']:,.0f} B, "
                f"{idle['requests_per_device_per_cycle']:g} requests"),
        ]
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    lines.append(verdict(report))
    lines += [f"  - {example}" for example in report["problems"]]
    return "\n".join(lines)


def plot(path: str, propagation: list, api_loaded: list[tuple[float, float]], started_ms: float) -> None:
    """Propagation of each enrolment, and API latency, against time since the load started."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit(PLOT_HINT) from None
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(10, 6))
    done = [(p.enrolled_s, p.steady_ms) for p in propagation if p.steady_ms is not None]
    top.scatter([at for at, _ in done], [ms for _, ms in done], s=4)
    top.set_ylabel("propagation to last steady terminal (ms)")
    top.set_title(f"load test, {time.strftime('%Y-%m-%d %H:%M')}")
    bottom.plot([t - started_ms / 1000 for t, _ in api_loaded], [ms for _, ms in api_loaded], marker=".", linewidth=0.5)
    bottom.set_ylabel("GET /api/terminals (ms)")
    bottom.set_xlabel("seconds since the load started")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
