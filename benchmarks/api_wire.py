"""What one ``GET /api/terminals`` costs the serving process on a real loopback socket, a new
connection each, as the load test's probe asks it (tools/loadtest/api_probe.py).

``benchmarks/api_cost.py`` times the resource alone; here the process's whole CPU (user and
system, from ``os.times``) is divided by the requests a client in a child process made, so
Twisted's HTTP server, the accept, the socket writes and the close count too. The snapshot is
the same throughout (``--fresh``: each request asks for state newer than the last, so the
database is read and the list made and encoded for each), the database SQLite read on the reactor thread (api_cost's ``InlineDatabase``).

    python benchmarks/api_wire.py [--terminals 200] [--requests 1000] [--fresh]
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import msgspec
from twisted.internet import reactor

sys.path.append(str(Path(__file__).resolve().parents[1]))  # benchmarks.api_cost, when PYTHONPATH does not name a tree

from benchmarks.api_cost import InlineDatabase, ingest_side  # noqa: E402
from gateway.config import GatewayConfig  # noqa: E402
from gateway.http.site import GatewaySite  # noqa: E402
from gateway.http.snapshot import Mirror, take  # noqa: E402
from gateway.store.database import make_engine, migrate  # noqa: E402

CLIENT = """
import http.client, sys
port, count = int(sys.argv[1]), int(sys.argv[2])
for _ in range(count):
    conn = http.client.HTTPConnection("127.0.0.1", port)
    conn.request("GET", "/api/terminals")
    answer = conn.getresponse()
    answer.read()
    assert answer.status == 200, answer.status
    conn.close()
"""


def site_for(terminals: int, folder: Path, fresh: bool) -> GatewaySite:
    engine = make_engine(f"sqlite:///{folder / 'api.db'}")
    migrate(engine)
    mirror = Mirror()
    mirror.update(msgspec.json.encode(take(ingest_side(terminals), 0.0)))
    gateway = SimpleNamespace(config=GatewayConfig(), reactor=reactor, db=InlineDatabase(engine), eventlog=mirror.eventlog,
                              registry=mirror.registry, reconciler=mirror.reconciler, doorman=mirror.doorman,
                              settings=mirror.settings, metrics=None, activity=None)
    site = GatewaySite(gateway, since=reactor.seconds if fresh else lambda: 0.0)
    site.resource.children[b"api"].shared.max_age_s = float("inf")  # the same snapshot, however long the run
    return site


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--terminals", type=int, default=200)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--fresh", action="store_true", help="state newer than the last for each request: read, made and encoded each time")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        port = reactor.listenTCP(0, site_for(args.terminals, Path(folder), args.fresh), interface="127.0.0.1")
        figures = {}

        def client(count: int):
            return subprocess.Popen([sys.executable, "-c", CLIENT, str(port.getHost().port), str(count)])

        def when_done(child, then):
            if child.poll() is None:
                reactor.callLater(0.02, when_done, child, then)
            else:
                then()

        def timed():
            before, began = os.times(), time.perf_counter()

            def done():
                after, n = os.times(), args.requests
                figures.update(terminals=args.terminals, fresh=args.fresh, requests=n,
                               user_us=round((after.user - before.user) / n * 1e6, 1),
                               system_us=round((after.system - before.system) / n * 1e6, 1),
                               per_s=round(n / (time.perf_counter() - began)))
                figures["request_us"] = round(figures["user_us"] + figures["system_us"], 1)
                reactor.stop()
            when_done(client(args.requests), done)

        reactor.callWhenRunning(lambda: when_done(client(50), timed))  # warmed up first
        reactor.run()
    print("  ".join(f"{k}={v}" for k, v in figures.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
