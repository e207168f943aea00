"""Users in the API: search and page them, show one as a credentials summary (never template bytes
or PIN hashes), and change them through the user directory so every change enters the changes
feed and reaches the terminals."""

from twisted.internet import defer, threads

from gateway.http.api import Param, Route
from gateway.http.queries import read_user, read_users
from gateway.terminals import ADMITTED
from gateway.sync.users import Members, UnknownUser
from protocol.records import (
    MAX_ACCESS_GROUPS,
    MAX_CARD_DATA,
    MAX_CARDS,
    MAX_NAME_CHARS,
    MAX_PIN_DIGITS,
    MAX_USER_ID_BYTES,
    PIN_PATTERN,
    Card,
    CardType,
    UserRecord,
    hash_pin,
)
from protocol.text import PLAIN_TEXT

USER_ID = Param("user_id", "string", "the user's id")
U32 = {"type": "integer", "minimum": 0, "maximum": 2**32 - 1}
U8_OR_NULL = {"type": ["integer", "null"], "minimum": 0, "maximum": 255}

GROUPS = {"type": "array", "items": U32, "maxItems": MAX_ACCESS_GROUPS, "uniqueItems": True}
CARDS = {
    "type": "array",
    "maxItems": MAX_CARDS,
    "uniqueItems": True,  # a card is its type and data
    "items": {
        "type": "object",
        "additionalProperties": False,
        "required": ["type", "data"],
        "properties": {
            "type": {"type": "string", "enum": [t.name for t in CardType]},
            "data": {"type": "string", "minLength": 2, "maxLength": 2 * MAX_CARD_DATA, "pattern": "^([0-9a-f]{2})*$",
                     "description": "lowercase hex"},
        },
    },
}
_FIELDS = {
    "name": {"type": ["string", "null"], "maxLength": MAX_NAME_CHARS, "pattern": PLAIN_TEXT},
    "pin": {"type": ["string", "null"], "minLength": 1, "maxLength": MAX_PIN_DIGITS, "pattern": PIN_PATTERN,
            "description": "digits; stored only as a hash, null removes it"},
    "access_groups": {**GROUPS, "description": "replaces every group"},
    "cards": {**CARDS, "description": "replaces every card"},
    "validity": {
        "type": ["object", "null"],
        "additionalProperties": False,
        "required": ["start", "end"],
        "properties": {"start": U32, "end": U32},
        "description": "seconds since the epoch; a period that ends before it starts is refused (400)",
    },
    "security_level": U8_OR_NULL,
    "auth_mode": U8_OR_NULL,
    "disabled": {"type": "boolean"},
}

CREATE_BODY = {
    "type": "object",
    "additionalProperties": False,
    "required": ["user_id"],
    "properties": {"user_id": {"type": "string", "minLength": 1, "maxLength": MAX_USER_ID_BYTES, "pattern": PLAIN_TEXT,
                               "description": f"at most {MAX_USER_ID_BYTES} bytes of UTF-8"}, **_FIELDS},
}
# An edit can also add and remove some members of the set fields, leaving the others as they are.
_MEMBERS = {"cards": ("add_cards", "remove_cards"), "access_groups": ("add_access_groups", "remove_access_groups")}
_EDIT_FIELDS = {
    **_FIELDS,
    "add_cards": {**CARDS, "description": "cards to add; the others stay"},
    "remove_cards": {**CARDS, "description": "cards to remove (type and data), each one the user has"},
    "add_access_groups": {**GROUPS, "description": "groups to add; the others stay"},
    "remove_access_groups": {**GROUPS, "description": "groups to remove, each one the user has"},
}
SET_FIELD_RULE = "a set field is replaced, or changed by its add and remove lists, not both"
EDIT_BODY = {
    "type": "object",
    "additionalProperties": False,
    "minProperties": 1,
    "properties": _EDIT_FIELDS,
    # cards excludes add_cards and remove_cards; access_groups excludes theirs.
    "dependentSchemas": {
        name: {"not": {"anyOf": [{"required": [add]}, {"required": [remove]}]},
               "description": f"{SET_FIELD_RULE}: give {name} or {add}/{remove}"}
        for name, (add, remove) in _MEMBERS.items()
    },
}
# What the schemas above cannot say (JSON Schema compares no two fields, counts characters, not
# bytes): a request breaking these gets a 400 naming the rule. docs/http-api.md lists them too.
UNSTATED_RULES = ("validity period ends before it starts",
                  f"user id must be 1 to {MAX_USER_ID_BYTES} bytes")  # of UTF-8: outside ASCII a character takes 2 to 4
_BROKEN_RULE = "a parameter or the body breaks a rule (the message says which); beyond the schemas: " + "; ".join(UNSTATED_RULES)


def record_fields(user_id: str, body: dict) -> defer.Deferred:
    """The UserRecord fields a checked body sets; fires once a clear PIN has become its hash.

    Hashing (PBKDF2, a few milliseconds) runs on a thread: the reactor serves terminals.
    """
    fields = {name: body[name] for name in ("name", "security_level", "auth_mode", "disabled") if name in body}
    if "access_groups" in body:
        fields["access_groups"] = tuple(body["access_groups"])
    if "cards" in body:
        fields["cards"] = tuple(_card(card) for card in body["cards"])
    for name, (add, remove) in _MEMBERS.items():
        if add in body or remove in body:  # never with ``name`` too: the schema refused that
            member = _card if name == "cards" else int
            fields[name] = Members(tuple(map(member, body.get(add, ()))), tuple(map(member, body.get(remove, ()))))
    if "validity" in body:
        validity = body["validity"]
        fields["validity"] = (validity["start"], validity["end"]) if validity is not None else None
    pin = body.get("pin")
    if pin is None:
        if "pin" in body:
            fields["pin_hash"] = None
        return defer.succeed(fields)
    return threads.deferToThread(hash_pin, user_id, pin).addCallback(lambda pin_hash: {**fields, "pin_hash": pin_hash})


def _card(card: dict) -> Card:
    return Card(CardType[card["type"]], bytes.fromhex(card["data"]))  # both checked by the schema


def _shown(call, user_id: str):
    def found(user):
        if user is None:
            raise UnknownUser(user_id)
        return user

    return call.gateway.db.read(read_user, user_id).addCallback(found)


def list_users(call):
    p = call.params

    def listed(result):
        found, more = result
        return {"users": found, "more": more, "next": found[-1]["user_id"] if more else None}

    return call.gateway.db.read(read_users, p["search"], p["after"], p["limit"]).addCallback(listed)


def show_user(call):
    return _shown(call, call.params["user_id"])


def user_terminals(call):
    """Which admitted terminals hold the user's current version: those the sync mode targets whose
    cursor reached the user's change (the pusher moves a cursor only after the terminal applied)."""
    mode = call.gateway.settings.mode

    def holders(user):
        groups = frozenset(user["access_groups"])
        found = []
        for term in sorted(call.gateway.registry.terminals.values(), key=lambda t: t.terminal_id):
            if term.admission != ADMITTED:
                continue
            targeted = mode.targets(groups, term.access_groups)
            found.append(dict(id=term.terminal_id, name=term.name, online=term.online, cursor=term.cursor,
                              targeted=targeted, holds=targeted and term.cursor >= user["change_seq"]))
        return {"user_id": user["user_id"], "change_seq": user["change_seq"], "sync_mode": str(mode), "terminals": found}

    return _shown(call, call.params["user_id"]).addCallback(holders)


def create_user(call):
    user_id = call.body["user_id"]
    d = record_fields(user_id, call.body)
    d.addCallback(lambda fields: call.gateway.users.create(UserRecord(user_id, **fields)))
    return d.addCallback(lambda _: _shown(call, user_id))


def edit_user(call):
    user_id = call.params["user_id"]
    d = record_fields(user_id, call.body)
    d.addCallback(lambda fields: call.gateway.users.edit(user_id, **fields))
    return d.addCallback(lambda _: _shown(call, user_id))


def delete_user(call):
    user_id = call.params["user_id"]
    return call.gateway.users.delete(user_id).addCallback(lambda _: {"deleted": user_id})


ROUTES = [
    Route(
        "GET",
        "/api/users",
        list_users,
        "Users in id order, paged by id, optionally only those whose id or name contains a text",
        (
            Param("search", "string", "part of the user id or name, any case"),
            Param("after", "string", "the last user id of the previous page"),
            Param("limit", "integer", "users per page", default=50, minimum=1, maximum=500),
        ),
        returns="UserList",
        reads_memory=False,
    ),
    Route("GET", "/api/users/{user_id}", show_user, "One user with a summary of credentials", (USER_ID,), returns="User", errors={404: "no such user"},
          reads_memory=False),
    Route("GET", "/api/users/{user_id}/terminals", user_terminals, "Which terminals hold the user's current version", (USER_ID,), returns="UserTerminals",
          errors={404: "no such user"}),
    Route("POST", "/api/users", create_user, "Create a user; terminals get it through the changes feed", body=CREATE_BODY, returns="User", status=201,
          errors={400: _BROKEN_RULE, 409: "a user with this id exists"}),
    Route("PATCH", "/api/users/{user_id}", edit_user, "Set some fields of a user (the server is authoritative)", (USER_ID,), EDIT_BODY, "User",
          errors={400: _BROKEN_RULE, 404: "no such user", 409: "a card or group to remove that the user does not have"}),
    Route("DELETE", "/api/users/{user_id}", delete_user, "Delete a user on the server and on every terminal", (USER_ID,), returns="Deleted", errors={404: "no such user"}),
]
