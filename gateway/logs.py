"""The gateway's log lines: one line per event, without a time stamp, for operators; or whole
events as JSON, for a parent process that logs them as its own."""

import sys

from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    PredicateResult,
    eventAsText,
    globalLogBeginner,
    jsonFileLogObserver,
)


def log_line(event, process: str = "") -> str | None:
    """One line per event; a failure's traceback follows it (a 500, a bug: someone must find it).
    ``process``: which worker said it, when there are several."""
    text = eventAsText(event, includeTraceback=True, includeTimestamp=False, includeSystem=False)
    if not text:
        return None
    level = event.get("log_level", LogLevel.info).name.upper()
    return f"{level:5} {process}{event.get('log_namespace', '-')}: {text}\n"


def _not_factory_chatter(event) -> PredicateResult:
    # Every factory, ours included, says "Starting factory <... at 0x...>" under its own namespace.
    return PredicateResult.no if event.get("log_format", "").startswith(("Starting factory", "Stopping factory")) else PredicateResult.maybe


def start_logging(stream=sys.stdout, level: LogLevel = LogLevel.info, process: str = "", json_records: bool = False) -> None:
    """Operators' log lines, without a time stamp: the service manager (journald) adds one.
    ``process``: which worker says them ("[worker 2] "), when there are several.
    ``json_records``: whole events instead, for a parent process that logs them as its own (the API process)."""
    levels = LogLevelFilterPredicate(defaultLogLevel=level)
    for chatty in ("log_legacy", "twisted"):  # "Port closed" and the like: not for operators
        levels.setLogLevelForNamespace(chatty, LogLevel.warn)
    output = jsonFileLogObserver(stream) if json_records else FileLogObserver(stream, lambda event: log_line(event, process))
    observer = FilteringLogObserver(output, [_not_factory_chatter, levels])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
