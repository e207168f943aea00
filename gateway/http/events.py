"""Events in the API: the stored log filtered and paged by id, its live stream, and the event types.

The sync events are first-class filter values, by their full text, a short name, or the
spelling of the vendor's documentation, and ``sync`` selects all of them.
"""

from gateway.store.database import DatabaseFailure
from gateway.http.api import Param, Route, parse_integer
from gateway.sync.monitor import (
    APPLIED_BY_DEVICE,
    CHANGE_DROPPED,
    DELETED_BY_SERVER,
    EVENT_CONFLICT,
    LOG_IRREGULAR,
    LOG_RESTARTED,
    MERGED_UNCHANGED,
    PUSH_REFUSED,
    RECONCILED,
    RECORD_REFUSED,
    SAVE_FAILED,
    SAVED_FROM_DEVICE,
    SYNC_EVENT_TYPES,
    UNREPAIRED_DIFFERENCE,
)
from gateway.http.queries import EventFilter, read_events
from protocol.events import EventCode

SYNC_SHORT_NAMES = {
    "device-update": SAVED_FROM_DEVICE,
    "server-update": APPLIED_BY_DEVICE,
    "save-failed": SAVE_FAILED,
    "push-refused": PUSH_REFUSED,
    "server-delete": DELETED_BY_SERVER,
    "merged-unchanged": MERGED_UNCHANGED,
    "change-dropped": CHANGE_DROPPED,
    "record-refused": RECORD_REFUSED,
    "repaired": RECONCILED,
    "differs": UNREPAIRED_DIFFERENCE,
    "log-restarted": LOG_RESTARTED,
    "event-conflict": EVENT_CONFLICT,
    "log-irregular": LOG_IRREGULAR,
}
# How the reference product's article spells them (no space before the parenthesis; the server is "BioStar").
VENDOR_SPELLINGS = {
    "User update succeeded(BioStar)": APPLIED_BY_DEVICE,
    "User update succeeded(Device)": SAVED_FROM_DEVICE,
    "Fail to save to the server DB": SAVE_FAILED,
}
ALL_SYNC = "sync"
TERMINAL_TYPES = tuple(code.name for code in EventCode)

# The names a ``type`` filter takes, as a schema: the request is checked against it and the
# OpenAPI document shows it. Codes without a name are written 0xNNNN, as they are stored.
EVENT_TYPE = {"description": f"an event type GET /api/event-types lists, '{ALL_SYNC}', a sync event's short name or vendor "
                             "spelling, or a code 0xNNNN",
              "anyOf": [{"type": "string", "enum": list(dict.fromkeys([ALL_SYNC, *SYNC_SHORT_NAMES, *VENDOR_SPELLINGS, *SYNC_EVENT_TYPES,
                                                                          *TERMINAL_TYPES]))},
                        {"type": "string", "pattern": "^0x[0-9A-F]{4}$"}]}

FILTER_PARAMS = (
    Param("type", "string", f"event type, a sync event's short name ({', '.join(SYNC_SHORT_NAMES)}) or vendor spelling "
                            f"({'; '.join(VENDOR_SPELLINGS)}), or '{ALL_SYNC}'; repeatable", repeated=True, choices=EVENT_TYPE),
    Param("terminal", "integer", "terminal id", minimum=0, maximum=2**32 - 1),
    Param("user", "string", "user id"),
)
TIME_PARAMS = (
    Param("since", "time", "occurred at or after: milliseconds since the epoch or ISO 8601"),
    Param("until", "time", "occurred before: milliseconds since the epoch or ISO 8601"),
)


def event_types(names: list[str]) -> tuple[str, ...]:
    """The stored type names a ``type`` filter means (each name was checked against EVENT_TYPE)."""
    found: list[str] = []
    for name in names:
        if name == ALL_SYNC:
            found += SYNC_EVENT_TYPES
        else:
            found.append(SYNC_SHORT_NAMES.get(name) or VENDOR_SPELLINGS.get(name, name))
    return tuple(dict.fromkeys(found))


def event_filter(params: dict) -> EventFilter:
    return EventFilter(
        types=event_types(params["type"]),
        terminal_id=params["terminal"],
        user_id=params["user"],
        since_ms=params.get("since"),
        until_ms=params.get("until"),
    )


def list_events(call):
    """Stored events, and beside them (``unsaved``) monitoring events still waiting for the
    database; while it cannot be read, those alone, with the reason (``database_error``)."""
    p = call.params
    flt = event_filter(p)
    unsaved = [e for e in call.gateway.eventlog.unsaved.shown() if flt.matches(e)]
    d = call.gateway.db.read(read_events, flt, p["after"], p["before"], p["limit"])
    d.addCallback(lambda result: {"events": result[0], "more": result[1], "unsaved": unsaved})

    def unreadable(failure):
        failure.trap(DatabaseFailure)
        return {"events": [], "more": False, "unsaved": unsaved, "database_error": failure.getErrorMessage()}

    return d.addErrback(unreadable)


def list_event_types(call):
    short = {full: short for short, full in SYNC_SHORT_NAMES.items()}
    types = [{"type": t, "sync": True, "short": short[t]} for t in SYNC_EVENT_TYPES]
    return {"types": types + [{"type": t, "sync": False, "short": None} for t in TERMINAL_TYPES]}


_REPLAY_AFTER = Param("after", "integer", "replay stored events after this id first (also the Last-Event-ID header)", minimum=0)


def follow_events(call):
    """Server-sent events: each newly stored event matching the filter, as it is stored."""
    after = call.params["after"]
    last_id = call.request.getHeader("last-event-id")  # an EventSource resuming: newer than its URL's "after"
    if last_id:
        after = parse_integer(last_id, "Last-Event-ID", _REPLAY_AFTER.schema)
    return call.stream.subscribe(call.request, event_filter(call.params), after)


ROUTES = [
    Route(
        "GET",
        "/api/events",
        list_events,
        "Stored events, filtered; newest first, or oldest first after a given id",
        FILTER_PARAMS
        + TIME_PARAMS
        + (
            Param("after", "integer", "only events with a higher id, oldest first (following the log)", minimum=0),
            Param("before", "integer", "only events with a lower id (paging back)", minimum=0),
            Param("limit", "integer", "events per page", default=100, minimum=1, maximum=1000),
        ),
        returns="EventList",
    ),
    Route("GET", "/api/event-types", list_event_types, "Event types a filter accepts", returns="EventTypes", reads_memory=False),
    Route(
        "GET",
        "/api/stream",
        follow_events,
        "Server-sent events (text/event-stream): each new event matching the filter, as JSON in 'data', its id in 'id'",
        FILTER_PARAMS + (_REPLAY_AFTER,),
        returns="Stream",
        reads_memory=False,  # its unsaved events come as the snapshots do (SnapshotFollower reads them while it has listeners)
    ),
]
