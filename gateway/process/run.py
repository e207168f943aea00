"""The gateway process: its start and its end (its log lines: gateway/logs.py).

``gateway run`` runs under ``twisted.internet.task.react``: a start-up failure (a port in use,
a database that cannot be reached) stops what did start, prints one line and exits with status
1 at once; SIGINT or SIGTERM stop the gateway cleanly and exit 0. ``gateway run --workers N``
runs ``run_workers`` instead: the database is brought up to date and the ports reserved once,
then a supervisor starts N such processes (gateway/process/workers.py).
"""

import sys
import time

from alembic.util import CommandError as MigrationError
from sqlalchemy.exc import SQLAlchemyError
from twisted.internet import defer, task
from twisted.internet.error import CannotListenError

from gateway.native.accept import raise_fd_limit
from gateway.config import GatewayConfig
from gateway.logs import start_logging
from gateway.store.database import Database, DatabaseFailure
from gateway.process.heap import freeze_startup
from gateway.process.service import Gateway
from gateway.sync.settings import SyncSettings
from gateway.native.tls import TlsSetupError
from gateway.sync.syncmode import SyncMode
from gateway.process.workers import SOLE, Supervisor, WorkerRole, reserve_port

# What an operator can fix: a port in use, a database down or unknown, a missing driver, a TLS file.
# Anything else is a bug, and react() logs its traceback.
START_FAILURES = (CannotListenError, DatabaseFailure, SQLAlchemyError, MigrationError, OSError, ImportError, TlsSetupError)


class StartFailed(Exception):
    """The gateway could not start; the message is one line for the person who started it."""


async def start_gateway(reactor, config: GatewayConfig, sync_mode: SyncMode | None = None, role: WorkerRole = SOLE) -> Gateway:
    """A started gateway, stopped when the reactor shuts down; StartFailed (with whatever did
    start already stopped, so no thread keeps the process alive) when it cannot start.
    ``sync_mode``: given on the command line, it replaces the stored mode."""
    try:
        gateway = Gateway(config, reactor, role)
    except START_FAILURES as exc:
        raise StartFailed(_reason(exc)) from exc
    try:
        gateway.start(sync_mode)
    except START_FAILURES as exc:
        await gateway.stop()
        raise StartFailed(_reason(exc)) from exc
    reactor.addSystemEventTrigger("before", "shutdown", gateway.stop)
    return gateway


def run(config: GatewayConfig, sync_mode: SyncMode | None = None, announce=None, role: WorkerRole = SOLE):
    """Run the gateway until it is stopped; exits the process (0 when stopped, 1 when it could not start).

    ``sync_mode``: given on the command line, replaces the stored mode. ``announce()``: printed
    once the gateway listens (the API token's first-start notice). ``role``: which worker of
    ``gateway run --workers N`` this process is.
    """
    task.react(_serve, [config, sync_mode, announce, role])


def run_workers(config: GatewayConfig, sync_mode: SyncMode | None, worker_argv) -> int:
    """``gateway run --workers N``: what must happen once (migrations, a ``--sync-mode``, the
    ports chosen), then N workers until stopped; the exit status (1: one could not start).
    ``worker_argv(index, tcp_port, http_port)``: a worker's command line."""
    start_logging()
    raise_fd_limit()
    try:
        tcp = reserve_port(config.tcp_host, config.tcp_port)  # first: a port in use changes nothing stored
        http = reserve_port(config.http_host, config.http_port)
        db = Database(config.db, reactor=None)
        try:
            db.open()
            settings = SyncSettings(db, SyncMode(config.sync_mode), on_change=None, clock=_WallClock)
            settings.load(sync_mode)
            settings.keep()
        finally:
            db.engine.dispose()
    except START_FAILURES as exc:
        print(f"gateway: cannot start: {_reason(exc)}", file=sys.stderr)
        return 1
    with tcp, http:  # held while the workers run: a restarted worker binds the same ports
        ports = tcp.getsockname()[1], http.getsockname()[1]
        return Supervisor(config.workers, lambda index: worker_argv(index, *ports)).run()


class _WallClock:
    """The clock settings are dated by, before any reactor runs."""

    seconds = staticmethod(time.time)


async def _serve(reactor, config: GatewayConfig, sync_mode, announce, role) -> None:
    start_logging(process=f"[worker {role.index}] " if role.count > 1 else "")
    try:
        gateway = await start_gateway(reactor, config, sync_mode, role)
    except StartFailed as exc:
        print(f"gateway: cannot start: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    freeze_startup()
    if announce is not None:
        announce(gateway)
    await defer.Deferred()  # until SIGINT or SIGTERM stops the reactor


def _reason(exc: BaseException) -> str:
    """One line: the first line of what the driver said (the rest is SQLAlchemy's links and hints)."""
    said = getattr(exc, "orig", None) or exc  # a DBAPI error wrapped by SQLAlchemy
    lines = [line.strip() for line in str(said).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    return f"{text} (is the database driver installed? see README: Install)" if isinstance(exc, ImportError) else text
