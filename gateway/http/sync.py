"""The sync mode in the API: read it, change it while the gateway runs."""

from gateway.http.api import Route
from gateway.sync.syncmode import SyncMode

MODES = [mode.value for mode in SyncMode]


def sync_json(mode: SyncMode) -> dict:
    return {"mode": mode.value, "modes": MODES, "pulls_device_updates": mode.pulls_device_updates, "means": mode.means}


def show_sync(call):
    return sync_json(call.gateway.settings.mode)


def set_sync(call):
    """Change the mode; the answer says what the new mode does and what the change stopped."""
    new, old = SyncMode(call.body["mode"]), call.gateway.settings.mode
    return call.gateway.settings.set_mode(new).addCallback(lambda mode: {**sync_json(mode), "stopped": mode.stops(old)})


SYNC_BODY = {
    "type": "object",
    "additionalProperties": False,
    "required": ["mode"],
    "properties": {"mode": {"type": "string", "enum": MODES}},
}

ROUTES = [
    Route("GET", "/api/sync", show_sync, "The sync mode", returns="Sync"),
    Route("PUT", "/api/sync", set_sync, "Change the sync mode; pending pushes are kept", body=SYNC_BODY, returns="Sync"),
]
