"""The OpenAPI 3.1 document of the API, generated from the routes so that it cannot drift from them.

Parameters and bodies are the very schemas requests are checked against (gateway/http/api.py);
each operation lists every status it may answer, so a client (or a property-based test) can hold
the API to it: a request the document allows gets its success status or one of the errors listed.
"""

from gateway.http.api import MAX_BODY, Param, Route
from gateway.sync.changes import RULES
from gateway.kinds import kinds

_NULLABLE_INT = {"type": ["integer", "null"]}
_TIME_MS = {"type": "integer", "description": "milliseconds since the epoch"}

SCHEMAS = {
    "Error": {
        "type": "object",
        "required": ["error", "status"],
        "properties": {"error": {"type": "string", "description": "what was wrong, for a person"}, "status": {"type": "integer"}},
    },
    "Terminal": {
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "name": {"type": "string"},
            "admission": {"type": "string", "enum": ["admitted", "pending", "refused"]},
            "online": {"type": "boolean"},
            "kind": {"type": "string", "description": "which kind of terminal (gateway/kinds.py); the enum lists the registered ones"},
            "offline_reason": {"type": ["string", "null"], "description": "why it is offline, when the gateway knows (a refused comm key, a device that does not answer...)"},
            "link": {"type": "string", "description": "TCP address, or bus and address"},
            "last_seen_ms": {**_NULLABLE_INT, "description": "when it last sent a frame, ms since the epoch; null if it never connected"},
            "model": {"type": "string"},
            "firmware": {"type": "string"},
            "clock_drift_s": {"type": ["number", "null"], "description": "how far its clock was ahead of the gateway's when it "
                                                                  "last connected, in seconds (ZK devices; null: not known)"},
            "access_groups": {"type": "array", "items": {"type": "integer"}},
            "cursor": {"type": "integer", "description": "highest change it applied (a PUSH device: whose commands are stored for it)"},
            "lag": {**_NULLABLE_INT, "description": "changes committed after its cursor (in sync mode specific, those meant for it), plus its keypad changes still to be pulled, plus (a PUSH "
                                                     "device) changes queued as commands it has not answered; "
                                                     "null unless admitted"},
            "pulls_owed": {"type": "integer", "description": "users changed at its keypad the gateway still has to pull"},
            "reconciliation": {
                "type": ["object", "null"],
                "description": "the last comparison of what it holds with the server (null: not compared yet)",
                "properties": {
                    "at_ms": _TIME_MS,
                    "compared": {"type": "integer"},
                    "repaired": {"type": "object", "additionalProperties": {"type": "integer"}, "description": "pushed, deleted, pulled"},
                    "repaired_total": {"type": "integer", "description": "users repaired since the gateway started"},
                    "differences": {"type": "integer", "description": "users that differ as the rules allow, left as they are"},
                    "why": {"type": "object", "additionalProperties": {"type": "integer"}, "description": "those users by reason"},
                    "note": {"type": ["string", "null"], "description": "why it was not compared"},
                },
            },
        },
    },
    "Reconciled": {
        "type": "object",
        "properties": {
            "terminals": {"type": "array", "items": {"type": "object", "description": "id, then what Terminal.reconciliation shows"}},
            "repaired": {"type": "integer", "description": "users repaired on every terminal while the call ran, by its rounds and by any round already under way that it waited for"},
            "differences": {"type": "integer", "description": "users that differ as the rules allow, on every terminal"},
        },
    },
    "Differences": {
        "type": "object",
        "properties": {
            "terminal": {"type": "integer"},
            "reconciled_ms": _NULLABLE_INT,
            "differences": {"type": "array", "items": {"type": "object", "properties": {"user_id": {"type": "string"}, "why": {"type": "string"}}}},
            "unlisted": {"type": "integer", "description": "differences the gateway process serving the terminal found beyond those it "
                                                          "could tell the one answering: counted, by why, in the terminal's reconciliation"},
        },
    },
    "TerminalList": {
        "type": "object",
        "properties": {
            "terminals": {"type": "array", "items": {"$ref": "#/components/schemas/Terminal"}},
            "last_change_seq": {"type": "integer"},
            "more": {"type": "boolean", "description": "terminals with higher ids follow: ask again with after=next"},
            "next": {"type": ["integer", "null"]},
            "fleet": {"type": "object", "description": "every terminal, whatever the page: how many, how many admitted, how many of those online",
                      "properties": {"terminals": {"type": "integer"}, "admitted": {"type": "integer"}, "online": {"type": "integer"}}},
        },
    },
    "User": {
        "type": "object",
        "description": "credentials as counts and types; never template bytes or PIN hashes",
        "properties": {
            "user_id": {"type": "string"},
            "name": {"type": ["string", "null"]},
            "access_groups": {"type": "array", "items": {"type": "integer"}},
            "cards": {"type": "array", "items": {"type": "string"}, "description": "the type of each card"},
            "fingerprints": {"type": "integer"},
            "faces": {"type": "integer"},
            "has_pin": {"type": "boolean"},
            "has_photo": {"type": "boolean"},
            "disabled": {"type": "boolean"},
            "validity": {"type": ["object", "null"], "properties": {"start": {"type": "integer"}, "end": {"type": "integer"}},
                         "description": "seconds since the epoch; null: always valid"},
            "security_level": _NULLABLE_INT,
            "auth_mode": _NULLABLE_INT,
            "change_seq": {"type": "integer"},
            "updated_ms": _TIME_MS,
        },
    },
    "UserList": {
        "type": "object",
        "properties": {
            "users": {"type": "array", "items": {"$ref": "#/components/schemas/User"}},
            "more": {"type": "boolean"},
            "next": {"type": ["string", "null"], "description": "pass as 'after' for the next page"},
        },
    },
    "Event": {
        "type": "object",
        "properties": {
            "id": {"type": ["integer", "null"]},
            "type": {"type": "string"},
            "sync": {"type": "boolean", "description": "one of the sync events"},
            "origin": {"type": ["string", "null"], "description": "device: a keypad change; server: a record the server sent"},
            "unsaved": {"type": "boolean", "description": "true: waiting for the database (then id is null)"},
            "terminal_id": _NULLABLE_INT,
            "terminal_event_id": _NULLABLE_INT,
            "log_epoch": {"type": "integer", "description": "the terminal's event log the id counts in"},
            "code": _NULLABLE_INT,
            "sub_code": _NULLABLE_INT,
            "user_id": {"type": ["string", "null"]},
            "occurred_ms": _TIME_MS,
            "recorded_ms": _TIME_MS,
            "detail": {"type": ["string", "null"]},
        },
    },
    "EventList": {
        "type": "object",
        "properties": {
            "events": {"type": "array", "items": {"$ref": "#/components/schemas/Event"}},
            "more": {"type": "boolean"},
            "unsaved": {"type": "array", "items": {"$ref": "#/components/schemas/Event"},
                        "description": "monitoring events still waiting for the database, newest first"},
            "database_error": {"type": "string", "description": "why stored events could not be read (then events is empty)"},
        },
    },
    "EventTypes": {
        "type": "object",
        "properties": {
            "types": {
                "type": "array",
                "items": {"type": "object", "properties": {"type": {"type": "string"}, "sync": {"type": "boolean"}, "short": {"type": ["string", "null"]}}},
            }
        },
    },
    "Sync": {
        "type": "object",
        "properties": {"mode": {"type": "string"}, "modes": {"type": "array", "items": {"type": "string"}}, "pulls_device_updates": {"type": "boolean"},
                       "means": {"type": "string", "description": "what the mode does"},
                       "stopped": {"type": "array", "items": {"type": "string"}, "description": "after a change: what it stopped"}},
    },
    "UserHistory": {
        "type": "object",
        "properties": {
            "user_id": {"type": "string"},
            "more": {"type": "boolean"},
            "next": {"type": ["integer", "null"], "description": "give as after= for the next page"},
            "rules": {"type": "object", "additionalProperties": {"type": "string"}, "description": "what each rule means"},
            "history": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "integer"},
                        "at_ms": _TIME_MS,
                        "source": {"type": "string", "enum": ["terminal", "api", "reconciliation"]},
                        "terminal_id": _NULLABLE_INT,
                        "change_seq": {**_NULLABLE_INT, "description": "the version's change; null: a decision that made no version"},
                        "version": {**_NULLABLE_INT, "description": "1 for the first version of the user"},
                        "changes": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "field": {"type": "string", "description": "a field, \"cards\", \"fingerprints\", \"faces\" (one member each), or \"user\""},
                                    "outcome": {"type": "string", "enum": ["taken", "refused", "set", "noted"]},
                                    "rule": {"type": "string", "enum": list(RULES)},
                                    "old": {"description": "the server's value before; a PIN or photo shows as \"set\""},
                                    "new": {"description": "what it became, or what the terminal offered when refused"},
                                },
                            },
                        },
                    },
                },
            },
        },
    },
    "UserProvenance": {
        "type": "object",
        "properties": {
            "user_id": {"type": "string"},
            "fields": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "field": {"type": "string"},
                        "value": {},
                        "source": {"type": ["string", "null"], "description": "terminal, api or reconciliation; null: older than the history"},
                        "terminal_id": _NULLABLE_INT,
                        "at_ms": _NULLABLE_INT,
                        "rule": {"type": ["string", "null"]},
                    },
                },
            },
        },
    },
    "UserTerminals": {
        "type": "object",
        "properties": {
            "user_id": {"type": "string"},
            "change_seq": {"type": "integer", "description": "the user's current version"},
            "sync_mode": {"type": "string"},
            "terminals": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "integer"},
                        "name": {"type": "string"},
                        "online": {"type": "boolean"},
                        "cursor": {"type": "integer"},
                        "targeted": {"type": "boolean", "description": "the sync mode sends this user to this terminal"},
                        "holds": {"type": "boolean", "description": "targeted, and its cursor reached change_seq"},
                    },
                },
            },
        },
    },
    "Activity": {
        "type": "object",
        "description": "one entry per whole second, oldest first, in every array",
        "properties": {
            "seconds": {"type": "array", "items": {"type": "integer"}, "description": "seconds since the epoch"},
            "events_stored": {"type": "array", "items": {"type": "integer"}, "description": "terminal log events stored"},
            "user_deliveries": {"type": "array", "items": {"type": "integer"}, "description": "user records and deletions terminals applied"},
            "sync_failures": {"type": "array", "items": {"type": "integer"}, "description": "'Fail to save to the server DB' and refused pushes"},
            "propagation_p99_ms": {"type": "array", "items": _NULLABLE_INT, "description": "p99 of the changes made at a terminal whose last apply fell in that second"},
            "totals": {"type": "object", "description": "the same over the whole span, and how many changes were timed"},
        },
    },
    "Removed": {"type": "object", "properties": {"removed": {"type": "integer"}}},
    "Lockouts": {
        "type": "object",
        "properties": {"lockouts": {"type": "array", "items": {
            "type": "object",
            "properties": {
                "kind": {"type": "string", "enum": ["address", "terminal"], "description": "an address refused at connect, or a terminal id under attack"},
                "address": {"type": ["string", "null"]},
                "terminal_id": {"type": ["integer", "null"]},
                "remaining_s": {"type": "number", "description": "seconds until it ends by itself"},
                "why": {"type": "string"},
            },
        }}},
    },
    "Cleared": {"type": "object", "properties": {"cleared": {"type": "string"}}},
    "Deleted": {"type": "object", "properties": {"deleted": {"type": "string"}}},
}

_ERROR = {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def document(routes: list[Route]) -> dict:
    paths: dict = {
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text exposition format", "content": {"text/plain": {}}}}}},
    }
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Terminal gateway API",
            "version": "1",
            "description": f"Reads are open (loopback by default); writes need 'Authorization: Bearer <api_token>'. Bodies are at most {MAX_BODY} bytes.",
        },
        "paths": paths,
        "components": {
            "schemas": _with_kinds(SCHEMAS),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "api_token from the gateway configuration"}},
        },
    }


def _with_kinds(schemas: dict) -> dict:
    """The Terminal schema's ``kind`` names the kinds registered in gateway/kinds.py."""
    terminal = schemas["Terminal"]
    kind = {**terminal["properties"]["kind"], "enum": list(kinds()),
            "description": "; ".join(f"{kind.name}: {kind.description}" for kind in kinds().values())}
    return {**schemas, "Terminal": {**terminal, "properties": {**terminal["properties"], "kind": kind}}}


def _operation(route: Route) -> dict:
    op = {"summary": route.summary, "operationId": route.view.__name__}
    op["parameters"] = [_parameter(p, "path") for p in route.path_params] + [_parameter(p, "query") for p in route.query_params]
    if route.body is not None:
        needed = bool(route.body.get("required") or route.body.get("minProperties"))
        op["requestBody"] = {"required": needed, "content": {"application/json": {"schema": route.body}}}
    if route.writes:
        op["security"] = [{"bearer": []}]
    if route.returns == "Stream":
        content = {"text/event-stream": {"schema": {"type": "string"}}}
    elif route.returns is None:
        content = {"application/json": {"schema": {"type": "object"}}}
    else:
        content = {"application/json": {"schema": {"$ref": f"#/components/schemas/{route.returns}"}}}
    op["responses"] = {str(route.status): {"description": "success", "content": content},
                       **{str(status): _error(why) for status, why in sorted(_errors(route).items())}}
    return op


def _errors(route: Route) -> dict[int, str]:
    """Every error status the plumbing may answer for this route, and the view's own."""
    errors = {503: "the database is unavailable; retry shortly"}
    if route.params or route.body is not None:
        errors[400] = "a parameter or the body breaks a rule (the message says which)"
    else:
        errors[400] = "a query parameter was given: this operation takes none"
    if route.writes:
        errors.update({401: "no bearer token", 403: "wrong token, or writes disabled"})
    if route.body is not None:
        errors[413] = f"body larger than {MAX_BODY} bytes"
    return {**errors, **route.errors}


def _error(why: str) -> dict:
    return {**_ERROR, "description": why}


def _parameter(param: Param, where: str) -> dict:
    schema = param.schema if param.default is None else {**param.schema, "default": param.default}
    if param.repeated:
        schema = {"type": "array", "items": schema}
    return {"name": param.name, "in": where, "required": where == "path", "description": param.description, "schema": schema}
