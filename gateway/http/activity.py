"""Activity in the API: per-second figures of the last minutes (gateway/activity.py), which the
monitoring page charts."""

from gateway.http.api import Param, Route


def show_activity(call):
    return call.gateway.activity.series(call.params["seconds"])


ROUTES = [
    Route(
        "GET",
        "/api/activity",
        show_activity,
        "Per-second figures of the last minutes: events stored, user deliveries, sync failures, propagation p99",
        (Param("seconds", "integer", "how many whole seconds, up to the last one", default=300, minimum=10, maximum=600),),
        returns="Activity",
        reads_memory=False,
    ),
]
