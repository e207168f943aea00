"""Latency figures as every part reports them: percentiles by nearest rank (a value that was
measured, never one interpolated between two), for the page's p99, the fleet and the load test."""

import math
from collections.abc import Iterable


def percentile(ordered: list[float], p: float) -> float:
    """The nearest-rank ``p``-th percentile of a sorted, non-empty list."""
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def percentiles(values: Iterable[float]) -> dict[str, float] | None:
    """p50, p95, p99 and max of some numbers; None when there are none."""
    ordered = sorted(values)
    if not ordered:
        return None
    return dict(p50=percentile(ordered, 50), p95=percentile(ordered, 95), p99=percentile(ordered, 99), max=ordered[-1])
