"""python -m tools.api_latency: p50/p99 of the API's read requests against a running gateway.

Each request opens its own connection, as the load test's API probe does, so the figures compare
with its ``api_ms``; run this against an idle gateway for the baseline.
"""

import argparse
import http.client
import json
import math
import sys
import time
from urllib.parse import urlsplit

PATHS = ("/api/terminals", "/api/events?limit=100")


def request_ms(host: str, port: int, path: str, timeout: float = 10.0) -> float:
    started = time.perf_counter()
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        answer = conn.getresponse()
        answer.read()
    finally:
        conn.close()
    if answer.status != 200:
        raise RuntimeError(f"GET {path} answered {answer.status} {answer.reason}")
    return (time.perf_counter() - started) * 1000


def percentile(samples: list[float], p: float) -> float:
    """Nearest rank: the smallest sample with at least p% of the samples at or below it."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def api_latency(url: str, requests: int = 200, paths=PATHS) -> dict:
    """{path: {"p50", "p99", "max"}} in milliseconds, over ``requests`` sequential requests per path."""
    where = urlsplit(url)
    figures = {}
    for path in paths:
        samples = [request_ms(where.hostname, where.port or 80, path) for _ in range(requests)]
        figures[path] = {"p50": round(percentile(samples, 50), 2), "p99": round(percentile(samples, 99), 2), "max": round(max(samples), 2)}
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.api_latency", description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="the gateway's HTTP address")
    parser.add_argument("--requests", type=int, default=200, help="requests per path (default 200)")
    args = parser.parse_args(argv)
    try:
        print(json.dumps(api_latency(args.url, args.requests), indent=2))
    except (OSError, RuntimeError) as exc:
        print(f"api_latency: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
