"""A user's history and provenance in the API: every version and decision with the rule behind
each field, and who gave each value the user holds now."""

from sqlalchemy import select

from gateway.http.api import Param, Route
from gateway.http.users import USER_ID
from gateway.store.schema import user_history
from gateway.sync.changes import RULES
from gateway.sync.history import provenance, read_history
from gateway.sync.users import UnknownUser, load_record


def history_page(conn, user_id: str, after: int | None, limit: int) -> dict:
    entries, more = read_history(conn, user_id, after, limit)
    if not entries and after is None and conn.execute(select(user_history.c.id).where(user_history.c.user_id == user_id).limit(1)).first() is None \
            and load_record(conn, user_id) is None:
        raise UnknownUser(user_id)
    return {"user_id": user_id, "history": entries, "more": more, "next": entries[-1]["id"] if more else None, "rules": RULES}


def provenance_of(conn, user_id: str) -> dict:
    record = load_record(conn, user_id)
    if record is None:
        raise UnknownUser(user_id)
    return {"user_id": user_id, "fields": provenance(conn, record)}


def user_history_view(call):
    p = call.params
    return call.gateway.db.read(history_page, p["user_id"], p["after"], p["limit"])


def user_provenance_view(call):
    return call.gateway.db.read(provenance_of, call.params["user_id"])


ROUTES = [
    Route("GET", "/api/users/{user_id}/history", user_history_view,
          "Every version of a user and every decision about it, oldest first: where it came from, what changed field by "
          "field, and the rule that took or refused each",
          (USER_ID, Param("after", "integer", "the last history id of the previous page", minimum=0),
           Param("limit", "integer", "entries per page", default=1000, minimum=1, maximum=10000)),
          returns="UserHistory", errors={404: "no such user, and no history of one"}, reads_memory=False),
    Route("GET", "/api/users/{user_id}/provenance", user_provenance_view,
          "For every field and credential the user holds now: the terminal or operator that gave it, and when",
          (USER_ID,), returns="UserProvenance", errors={404: "no such user"}, reads_memory=False),
]
