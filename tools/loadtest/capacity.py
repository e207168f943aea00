"""Capacity: the offered rate raised step by step until the gateway no longer holds it.

Each step is a whole load test (a fresh gateway and database, the fleet, settling, the
convergence check) at one offered rate of the ladder. A step is *held* when the run converged
(nothing lost, duplicated or diverged, nothing left to repair), every enrolment reached every
steady terminal, and p99 propagation stayed within the limit. The search stops at the first step
not held: the capacity is the highest rate held below it. A step missing only the latency limit
is run once more first.
"""

from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_LADDER = (5, 10, 20, 30, 40, 50, 60, 80, 100)  # enrolments/s in enroll-storm: 200 terminals x 60/s is 12,000 deliveries/s
P99_LIMIT_MS = 2000.0


class LadderError(ValueError):
    """A --ladder that is not rising positive numbers."""


def parse_ladder(text: str) -> tuple[float, ...]:
    """``"5,10,20"`` -> (5.0, 10.0, 20.0): offered rates, rising."""
    try:
        rates = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise LadderError(f"expected rates separated by commas, like 5,10,20, not {text!r}") from None
    if not rates or any(r <= 0 for r in rates) or list(rates) != sorted(set(rates)):
        raise LadderError(f"expected positive rates rising from left to right, not {text!r}")
    return rates


def step_verdict(report: dict, p99_limit_ms: float = P99_LIMIT_MS) -> str | None:
    """Why a step's run does not hold its rate, or None when it does."""
    if not report["ok"]:
        return "not converged: " + _losses(report)
    if report["propagation_incomplete"]:
        return f"{report['propagation_incomplete']} enrolments never reached every steady terminal"
    p99 = (report["propagation_ms"] or {}).get("p99")
    if p99 is None:
        return "no enrolment completed: no propagation to judge"
    if p99 > p99_limit_ms:
        return f"p99 propagation {p99:,.0f} ms > {p99_limit_ms:,.0f} ms"
    return None


def _losses(report: dict) -> str:
    keys = ("lost_events", "duplicate_events", "lost_updates", "diverged_terminals", "reconcile_repaired")
    found = [f"{k} {report[k]}" for k in keys if report.get(k)]
    if not report.get("settled", True):
        found.append("did not settle")
    return ", ".join(found) or "see its problems"


@dataclass(frozen=True)
class Step:
    rate: float
    report: dict
    why_not: str | None  # None: held

    @property
    def held(self) -> bool:
        return self.why_not is None

    def summary(self) -> dict:
        r, api = self.report, self.report.get("api_ms") or {}
        return dict(rate=self.rate, held=self.held, why_not=self.why_not,
                    user_deliveries_per_s=r["user_deliveries_per_s"], events_per_s=r["events_per_s"],
                    propagation_p99_ms=(r["propagation_ms"] or {}).get("p99"),
                    gateway_cpu_us_per_delivery=r["gateway_cpu_us_per_delivery"],
                    gateway_idle_cpu_us_per_terminal_s=r.get("gateway_idle_cpu_us_per_terminal_s"),
                    database_cpu_us_per_delivery=r.get("database_cpu_us_per_delivery"),
                    database_cpu_reason=r.get("database_cpu_reason"),
                    database_wal_bytes_per_delivery=r.get("database_wal_bytes_per_delivery"),
                    api_p99_ms=api.get("p99"), api_idle_p99_ms=api.get("idle_p99"),
                    gateway_cpu_s=r["gateway_cpu_s"], fleet_cpu_s=r["fleet_cpu_s"], duration_s=r["duration_s"])


def find_capacity(ladder, run_step: Callable[[float], dict], p99_limit_ms: float = P99_LIMIT_MS,
                  on_step: Callable[[Step], None] = lambda step: None, whole: bool = False) -> list[Step]:
    """Run ``run_step(rate)`` up the ladder until a step is not held; every step run, in order.

    A step that converged but missed the latency limit is run once more before the search stops:
    on a shared machine one stall of a few seconds decides a short step's p99. Losing anything
    is never given a second chance. ``whole``: every rate once, held or not (figures by rate,
    such as the CPU per delivery, rather than a search)."""
    steps = []
    for rate in ladder:
        if whole:
            report = run_step(rate)
            steps.append(Step(rate, report, step_verdict(report, p99_limit_ms)))
            on_step(steps[-1])
            continue
        for attempt in (1, 2):
            report = run_step(rate)
            step = Step(rate, report, step_verdict(report, p99_limit_ms))
            steps.append(step)
            on_step(step)
            if step.held or not report["ok"]:
                break
        if not step.held:
            break
    return steps


def capacity_report(steps: list[Step], p99_limit_ms: float) -> dict:
    """The highest rate held (None if not even the first), with its figures, and every step."""
    held = [s for s in steps if s.held]
    best = held[-1].summary() if held else None
    return dict(
        p99_limit_ms=p99_limit_ms,
        capacity_rate=best and best["rate"],
        capacity=best,
        ladder_exhausted=bool(steps) and steps[-1].held,  # the gateway held the top of the ladder: capacity is higher
        stopped_by=None if not steps or steps[-1].held else steps[-1].summary(),
        steps=[s.summary() for s in steps],
        reports=[s.report for s in steps],
    )


def capacity_table(found: dict) -> str:
    def show(value, fmt="{:,.0f}"):
        return "-" if value is None else fmt.format(value)

    head = (f"{'rate/s':>7} {'deliv/s':>8} {'p99 ms':>8} {'CPU us/deliv':>12} {'db us/deliv':>11} {'idle us/s/term':>14} {'API p99 ms':>10} "
            f"{'idle':>6}  verdict")
    lines = [head]
    for s in found["steps"]:
        lines.append(f"{s['rate']:>7g} {show(s['user_deliveries_per_s']):>8} {show(s['propagation_p99_ms']):>8} "
                     f"{show(s['gateway_cpu_us_per_delivery']):>12} {show(s.get('database_cpu_us_per_delivery')):>11} "
                     f"{show(s.get('gateway_idle_cpu_us_per_terminal_s'), '{:,.1f}'):>14} "
                     f"{show(s['api_p99_ms'], '{:,.1f}'):>10} "
                     f"{show(s['api_idle_p99_ms'], '{:,.1f}'):>6}  {'held' if s['held'] else s['why_not']}")
    best = found["capacity"]
    if best is None:
        lines.append(f"capacity: not even the first rate held (p99 limit {found['p99_limit_ms']:,.0f} ms)")
    else:
        more = " (the top of the ladder: it holds more)" if found["ladder_exhausted"] else ""
        lines.append(f"capacity: {best['rate']:g}/s held{more}: {show(best['user_deliveries_per_s'])} deliveries/s, "
                     f"p99 propagation {show(best['propagation_p99_ms'])} ms, {show(best['gateway_cpu_us_per_delivery'])} us "
                     f"gateway CPU per delivery, API p99 {show(best['api_p99_ms'], '{:,.1f}')} ms loaded / "
                     f"{show(best['api_idle_p99_ms'], '{:,.1f}')} ms idle")
    return "\n".join(lines)
