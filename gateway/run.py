"""run(): the gateway process: logging to stdout, the reactor, a clean stop on SIGINT/SIGTERM."""

import sys

from twisted.internet import reactor
from twisted.logger import FileLogObserver, LogLevel, LogLevelFilterPredicate, FilteringLogObserver, globalLogBeginner, formatEvent

from gateway.config import GatewayConfig
from gateway.service import Gateway


def _line(event) -> str | None:
    text = formatEvent(event)
    if not text:
        return None
    level = event.get("log_level", LogLevel.info).name.upper()
    return f"{level:5} {event.get('log_namespace', '-')}: {text}\n"


def start_logging(stream=sys.stdout, level: LogLevel = LogLevel.info) -> None:
    levels = LogLevelFilterPredicate(defaultLogLevel=level)
    for chatty in ("log_legacy", "twisted"):  # "Starting factory", "Port closed": not for operators
        levels.setLogLevelForNamespace(chatty, LogLevel.warn)
    observer = FilteringLogObserver(FileLogObserver(stream, _line), [levels])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


def run(config: GatewayConfig) -> int:
    start_logging()
    gateway = Gateway(config, reactor)
    try:
        gateway.start()
    except Exception as exc:  # start-up problems (port taken, database unreachable) are the user's to fix
        print(f"gateway: cannot start: {exc}", file=sys.stderr)
        return 1
    reactor.addSystemEventTrigger("before", "shutdown", gateway.stop)
    reactor.run()
    return 0
