"""Log set-up of the simulator's processes: Twisted's own text lines, Twisted's chatter held back.

A simulated terminal's log is for the person testing a gateway: Twisted's standard format (time
stamped, so it reads beside the gateway's log) on standard error, which leaves standard output
to what scripts read (the bus's device, a fleet's summary).
"""

import sys

from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    PredicateResult,
    globalLogBeginner,
    textFileLogObserver,
)


def start_logging(stream=sys.stderr, level: LogLevel = LogLevel.info) -> None:
    levels = LogLevelFilterPredicate(defaultLogLevel=level)
    for chatty in ("log_legacy", "twisted"):
        levels.setLogLevelForNamespace(chatty, max(level, LogLevel.warn))
    observer = FilteringLogObserver(textFileLogObserver(stream), [_not_factory_chatter, levels])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


def _not_factory_chatter(event) -> PredicateResult:
    # A thousand dialling terminals would each say "Starting factory <... at 0x...>" at every reconnect.
    starts_or_stops = event.get("log_format", "").startswith(("Starting factory", "Stopping factory"))
    return PredicateResult.no if starts_or_stops else PredicateResult.maybe
