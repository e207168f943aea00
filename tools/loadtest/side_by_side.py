"""``make loadtest``'s capacity: the same search on SQLite and on PostgreSQL, one after the
other on the same machine, printed side by side with PostgreSQL's share of SQLite's figures.

PostgreSQL is a throwaway cluster (tools/loadtest/pg_cluster.py) with fsync on, as a site runs
it, removed afterwards. Without a PostgreSQL server installed the SQLite search runs alone and
the table says so. Every other argument goes to both searches (``gateway-loadtest
--find-capacity ...``); each writes its own report beside ``--json``, which gets both.

    python -m tools.loadtest.side_by_side --devices 200 --scenario enroll-storm --duration 15 --json reports/capacity.json
"""

import argparse
import json
import sys
from pathlib import Path

from tools.loadtest import harness
from tools.loadtest.pg_cluster import PostgresCluster, server_binaries

ROWS = (  # (label, key of a capacity summary, format)
    ("rate held /s", "rate", "{:g}"),
    ("deliveries/s", "user_deliveries_per_s", "{:,.0f}"),
    ("p99 propagation ms", "propagation_p99_ms", "{:,.0f}"),
    ("gateway CPU us/delivery", "gateway_cpu_us_per_delivery", "{:,.0f}"),
    ("database CPU us/delivery", "database_cpu_us_per_delivery", "{:,.0f}"),
    ("WAL bytes/delivery", "database_wal_bytes_per_delivery", "{:,.0f}"),
    ("API p99 ms", "api_p99_ms", "{:,.1f}"),
)
LOSSES = ("lost_events", "duplicate_events", "lost_updates", "diverged_terminals")


def lost(found: dict) -> int:
    """Events and updates lost, duplicated or diverged over every step of a search."""
    return sum(report.get(key) or 0 for report in found["reports"] for key in LOSSES)


def table(sqlite: dict | None, postgresql: dict | None, why_no_postgresql: str | None = None) -> str:
    def figure(found, key, fmt):
        value = found and found["capacity"] and found["capacity"].get(key)
        return "-" if value is None else fmt.format(value)

    lines = [f"{'':24} {'SQLite':>10} {'PostgreSQL':>11} {'PG/SQLite':>9}"]
    for label, key, fmt in ROWS:
        a, b = (found and found["capacity"] and found["capacity"].get(key) for found in (sqlite, postgresql))
        ratio = f"{b / a:.2f}" if a and b is not None else "-"
        lines.append(f"{label:24} {figure(sqlite, key, fmt):>10} {figure(postgresql, key, fmt):>11} {ratio:>9}")
    lines.append(f"{'lost, all steps':24} {lost(sqlite) if sqlite else '-':>10} {lost(postgresql) if postgresql else '-':>11}")
    reasons = {found["capacity"].get("database_cpu_reason") for found in (sqlite, postgresql) if found and found["capacity"]}
    lines += [f"database CPU: {why}" for why in sorted(reason for reason in reasons if reason)]
    if why_no_postgresql:
        lines.append(f"PostgreSQL not measured: {why_no_postgresql}")
    return "\n".join(lines)


def search(argv: list[str], report: Path) -> tuple[int, dict | None]:
    """A capacity search's exit status (0: a rate held, nothing lost) and its report."""
    status = harness.main([*argv, "--find-capacity", "--json", str(report)])
    return status, json.loads(report.read_text()) if report.exists() else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.loadtest.side_by_side", description=__doc__.splitlines()[0])
    p.add_argument("--json", default="capacity.json", help="both searches' reports (each also beside it)")
    args, rest = p.parse_known_args(argv)
    out = Path(args.json)
    for report in out.parent.glob(f"{out.stem}-*.json"):
        report.unlink()  # a search that writes none must not show an older run's
    status, sqlite = search(rest, out.with_name(f"{out.stem}-sqlite.json"))
    postgresql, why = None, None
    bindir = server_binaries()
    if bindir is None:
        why = "no PostgreSQL server installed (make system-deps installs it)"
    else:
        cluster = PostgresCluster(bindir, fsync=True)
        cluster.start()
        try:
            pg_status, postgresql = search([*rest, "--db", cluster.new_database("capacity")], out.with_name(f"{out.stem}-postgresql.json"))
            status = status or pg_status
        finally:
            cluster.stop()
    print(table(sqlite, postgresql, why))
    out.write_text(json.dumps(dict(sqlite=sqlite, postgresql=postgresql, postgresql_not_measured=why), indent=2) + "\n")
    print(f"both reports written to {out}")
    return status


if __name__ == "__main__":
    sys.exit(main())
