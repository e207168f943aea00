"""Terminals in the API: what the registry knows of each, how far behind the changes feed each
is, and an administrator's admission decisions."""

import heapq
from operator import attrgetter

from gateway.http.api import ApiError, Param, Route
from gateway.http.queries import sync_state
from gateway.http.users import GROUPS
from gateway.kinds import kinds
from gateway.terminals import ADMITTED, REFUSED

TERMINAL_ID = Param("terminal_id", "integer", "the terminal's id (from its HELLO)", minimum=0, maximum=2**32 - 1)


def terminal_json(term, behind: int, pulls_owed: int = 0, reconciliation: dict | None = None, unanswered: int = 0) -> dict:
    """``behind``: changes after its cursor meant for it (gateway/sync/due.py)."""
    return dict(
        id=term.terminal_id,
        name=term.name,
        admission=term.admission,
        online=term.online,
        kind=term.kind,
        offline_reason=None if term.online else term.offline_reason or None,
        link=term.link,
        last_seen_ms=term.heard_ms,
        model=term.model,
        firmware=term.firmware,
        clock_drift_s=term.clock_drift_s,
        access_groups=sorted(term.access_groups),
        cursor=term.cursor,
        # Changes committed after the terminal's cursor and meant for it (in mode "specific", those
        # of its groups), keypad changes of its still to be pulled, and (a PUSH device) changes
        # stored as commands it has not answered: its cursor moved when they were stored.
        lag=behind + pulls_owed + unanswered if term.admission == ADMITTED else None,
        pulls_owed=pulls_owed,
        # The last comparison of what it holds with the server: repairs made, differences left.
        reconciliation=reconciliation,
    )


def _json(call, term, state) -> dict:
    _, owed, unanswered, recent = state
    reconciler = call.gateway.reconciler
    found = reconciler.last.get(term.terminal_id)
    reconciliation = found.as_json(reconciler.repaired_total[term.terminal_id]) if found else None
    behind = recent.behind(term.cursor, term.access_groups, call.gateway.settings.mode)
    return terminal_json(term, behind, owed.get(term.terminal_id, 0), reconciliation, unanswered.get(term.terminal_id, 0))


def _terminal(call):
    term = call.gateway.registry.terminals.get(call.params["terminal_id"])
    if term is None:
        raise ApiError(404, f"no terminal {call.params['terminal_id']}")
    return term


def list_terminals(call):
    """Terminals in id order: every one, or a page of ``limit`` after ``after``; and the whole
    fleet's figures (``fleet``), which a page of it cannot show."""
    after, limit = call.params["after"], call.params["limit"]
    return call.shared.read(sync_state).addCallback(
        lambda state: call.shared.made_from(("terminals", after, limit), state, lambda: _listed(call, state, after, limit)))


def _listed(call, state, after: int | None, limit: int | None) -> dict:
    terminals = call.gateway.registry.terminals.values()
    wanted = terminals if after is None else [t for t in terminals if t.terminal_id > after]
    key = attrgetter("terminal_id")
    page = sorted(wanted, key=key) if limit is None else heapq.nsmallest(limit + 1, wanted, key=key)
    more = limit is not None and len(page) > limit
    page = page[:limit] if more else page
    admitted = [t for t in terminals if t.admission == ADMITTED]
    return {"terminals": [_json(call, t, state) for t in page], "last_change_seq": state[0], "more": more,
            "next": page[-1].terminal_id if more else None,
            "fleet": {"terminals": len(terminals), "admitted": len(admitted), "online": sum(t.online for t in admitted)}}


def show_terminal(call):
    term = _terminal(call)
    return call.shared.read(sync_state).addCallback(lambda state: _json(call, term, state))


def list_differences(call):
    """The users a terminal holds differently from the server and why, as the last reconciliation found them."""
    term = _terminal(call)
    found = call.gateway.reconciler.last.get(term.terminal_id)
    differences = sorted(found.differences.items()) if found else []
    return {"terminal": term.terminal_id, "reconciled_ms": found.at_ms if found else None,
            "differences": [{"user_id": u, "why": why} for u, why in differences],
            "unlisted": found.unlisted.total() if found else 0}


def admit_terminal(call):
    """Admit a pending or refused terminal, or, with its secret, one that has not connected yet. A
    terminal of a kind that proves nothing (a PUSH device) needs no secret."""
    terminal_id, secret = call.params["terminal_id"], call.body.get("secret")
    term = call.gateway.registry.terminals.get(terminal_id)
    proves_nothing = term is not None and not kinds()[term.kind].native_sessions  # a PUSH device: nothing to prove
    if not (secret or proves_nothing or (term and term.secret) or call.gateway.config.default_secret):
        raise ApiError(400 if term else 404, f"terminal {terminal_id} has no secret: give its secret to admit it")
    groups = call.body.get("access_groups")
    if groups is not None and terminal_id in call.gateway.config.configured_ids():
        raise ApiError(409, f"terminal {terminal_id} is listed in the gateway configuration: set its groups there")
    d = call.gateway.registry.set_admission(terminal_id, ADMITTED, secret, None if groups is None else frozenset(groups))
    return d.addCallback(lambda _: show_terminal(call))


def refuse_terminal(call):
    term = _terminal(call)
    d = call.gateway.registry.set_admission(term.terminal_id, REFUSED)
    return d.addCallback(lambda _: show_terminal(call))


def remove_terminal(call):
    """Forget a terminal; its events stay in the log. A configured one comes back on restart."""
    term = _terminal(call)
    if term.terminal_id in call.gateway.config.configured_ids():
        raise ApiError(409, f"terminal {term.terminal_id} is listed in the gateway configuration: remove it there")
    return call.gateway.registry.remove(term.terminal_id).addCallback(lambda _: {"removed": term.terminal_id})


def reconcile_all(call):
    """Compare every online terminal with the server now, those other gateway processes serve
    included; what each found."""
    reconciler = call.gateway.reconciler
    # A round already under way when the call came (the one connecting starts, say) is waited
    # for and may be the one that repairs: count what every round repaired meanwhile, not only
    # what the last one found left to repair.
    before = {t: reconciler.repaired_total[t] for t in reconciler.last}
    d = reconciler.reconcile_everywhere()

    def repaired_meanwhile(terminal_id: int, found: dict) -> int:
        if terminal_id in before:
            return reconciler.repaired_total[terminal_id] - before[terminal_id]
        return sum(found["repaired"].values())  # first findings heard of it: its totals may predate the call

    def found(_):
        online = sorted(t.terminal_id for t in call.gateway.registry.terminals.values() if t.online)
        done = {t: reconciler.last[t].as_json(reconciler.repaired_total[t]) for t in online if t in reconciler.last}
        return {"terminals": [dict(id=t, **r) for t, r in done.items()],
                "repaired": sum(repaired_meanwhile(t, r) for t, r in done.items()),
                "differences": sum(r["differences"] for r in done.values())}

    return d.addCallback(found)


ADMIT_BODY = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "secret": {"type": "string", "minLength": 1, "maxLength": 200, "description": "needed unless the terminal already has one or is of a kind that proves none (a PUSH device)"},
        "access_groups": {**GROUPS, "description": "the terminal's access groups (sync mode specific sends it the users sharing one); "
                                                   "given, they replace its groups"},
    },
}

ROUTES = [
    Route("GET", "/api/terminals", list_terminals, "Every known terminal, online or not, with its sync lag, in id order; a page of "
          "them with limit", (Param("after", "integer", "the last terminal id of the previous page (its 'next')", minimum=0, maximum=2**32 - 1),
                              Param("limit", "integer", "terminals per page; every terminal when not given", minimum=1, maximum=10_000)),
          returns="TerminalList"),
    Route("GET", "/api/terminals/{terminal_id}", show_terminal, "One terminal", (TERMINAL_ID,), returns="Terminal", errors={404: "no such terminal"}),
    Route("GET", "/api/terminals/{terminal_id}/differences", list_differences,
          "Users the terminal holds differently from the server, left as the rules allow, and why", (TERMINAL_ID,), returns="Differences",
          errors={404: "no such terminal"}),
    Route("POST", "/api/reconcile", reconcile_all, "Compare every online terminal with the server now and repair what the gateway owns",
          (), {"type": "object", "additionalProperties": False}, "Reconciled"),
    Route("POST", "/api/terminals/{terminal_id}/admit", admit_terminal, "Admit a pending or refused terminal, or register one ahead of its first connection (give its secret)", (TERMINAL_ID,), ADMIT_BODY, "Terminal",
          errors={404: "no such terminal, and no secret given to register it", 409: "groups given for a terminal of the configuration file"}),
    Route("POST", "/api/terminals/{terminal_id}/refuse", refuse_terminal, "Refuse a terminal (closes its link)", (TERMINAL_ID,), {"type": "object", "additionalProperties": False}, "Terminal", errors={404: "no such terminal"}),
    Route("DELETE", "/api/terminals/{terminal_id}", remove_terminal, "Forget a terminal not in the configuration", (TERMINAL_ID,), returns="Removed",
          errors={404: "no such terminal", 409: "the terminal is in the configuration"}),
]
