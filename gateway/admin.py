"""Administrative commands: a client of a running gateway's HTTP API, printing tables for people
and JSON for scripts.

The standard library's urllib speaks to the gateway (wcwidth measures text for the tables), and
every failure is one line saying what to do, never a traceback: these commands are what an
operator types when something is already wrong.
"""

import json
import os
import sys
import time
from http.client import HTTPException
from urllib import error, parse, request

from wcwidth import wcswidth, wcwidth

from gateway.api_token import TOKEN_ENV, TOKEN_FILE, local_token

DEFAULT_URL = "http://127.0.0.1:8080"


class CommandFailed(Exception):
    """What went wrong, in one line for the person who typed the command."""


class ApiClient:
    def __init__(self, url: str, token: str | None = None, timeout: float = 10.0):
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def call(self, method: str, path: str, query: dict | None = None, body: dict | None = None) -> dict:
        with self._open(method, path, query, body, self.timeout) as response:
            try:
                raw = response.read()
            except (OSError, HTTPException) as exc:
                raise CommandFailed(f"lost the connection to the gateway at {self.url}: {exc or type(exc).__name__}") from None
        return self._json(raw)

    def stream(self, path: str, query: dict | None = None, idle_timeout: float = 60.0):
        """Events from a server-sent event stream, as dicts; a ``{"gap": True}`` when some were skipped.

        The gateway sends a keepalive every 15 s, so ``idle_timeout`` of silence means it is gone.
        """
        with self._open("GET", path, query, None, idle_timeout) as response:
            kind, data = "message", []
            try:
                for raw in response:
                    line = raw.decode("utf-8").rstrip("\r\n")
                    if line.startswith("data:"):
                        data.append(line[5:].strip())
                    elif line.startswith("event:"):
                        kind = line[6:].strip()
                    elif not line and (data or kind != "message"):
                        yield {"gap": True} if kind == "gap" else self._json("\n".join(data).encode())
                        kind, data = "message", []
            except (OSError, HTTPException) as exc:
                raise CommandFailed(f"lost the event stream from {self.url}: {exc or type(exc).__name__}") from None
        raise CommandFailed(f"the gateway at {self.url} closed the event stream")

    def _open(self, method, path, query, body, timeout):
        url = self.url + path + ("?" + parse.urlencode(_query(query), doseq=True) if query else "")
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            req = request.Request(url, method=method, headers=headers, data=json.dumps(body).encode() if body is not None else None)
            return request.urlopen(req, timeout=timeout)
        except error.HTTPError as exc:
            raise CommandFailed(self._http_error(exc)) from None
        except error.URLError as exc:
            raise CommandFailed(f"cannot reach the gateway at {self.url}: {exc.reason} (is `gateway run` running? see --url)") from None
        except TimeoutError:
            raise CommandFailed(f"the gateway at {self.url} did not answer within {timeout:g} s") from None
        except (OSError, HTTPException) as exc:  # connected, then the answer broke off
            raise CommandFailed(f"lost the connection to the gateway at {self.url}: {exc or type(exc).__name__}") from None
        except ValueError:  # urllib's word for a URL it cannot use
            raise CommandFailed(f"--url {self.url!r} is not an http:// address") from None

    def _http_error(self, exc: error.HTTPError) -> str:
        try:
            message = json.loads(exc.read())["error"]
        except (ValueError, KeyError, TypeError):
            message = exc.reason
        hint = f" (give --token, set {TOKEN_ENV}, or run this where the gateway keeps {TOKEN_FILE})" if exc.code == 401 and not self.token else ""
        return f"{message}{hint} [HTTP {exc.code}]"

    def _json(self, raw: bytes):
        try:
            return json.loads(raw)
        except ValueError:
            raise CommandFailed(f"{self.url} did not answer with JSON: is it a gateway?") from None


def _query(query: dict) -> dict:
    return {k: v for k, v in query.items() if v is not None and v != []}


# -- output -------------------------------------------------------------------------------------


def table(headers: list[str], rows: list[list]) -> str:
    cells = [headers] + [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max(width(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(pad(v, w) for v, w in zip(row, widths)).rstrip() for row in cells)


def width(text: str) -> int:
    """Columns ``text`` takes on a terminal: two for a CJK character, none for a combining mark."""
    found = wcswidth(text)
    return found if found >= 0 else sum(max(wcwidth(c), 0) for c in text)  # -1: a control character in it


def pad(text: str, columns: int) -> str:
    return text + " " * (columns - width(text))


def when(ms: int | None) -> str:
    if not ms:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000)) + f".{ms % 1000:03d}"


# The widest type an event of ours has ("User update merged, nothing changed (Device)"): columns
# after it stay aligned; a longer type from a terminal pushes its own line's columns only.
TYPE_COLUMNS = 44
EVENT_HEADER = ("ID", "WHEN", "TERMINAL", "ORIGIN", "TYPE", "USER", "DETAIL")


def event_line(e: dict) -> str:
    """One event as a line of ``gateway events``; an event the database has not taken yet (no id) says "unsaved"."""
    terminal = "" if e["terminal_id"] is None else e["terminal_id"]
    origin = e.get("origin") or ""  # device: a keypad change; server: a record the server sent
    number = "unsaved" if e.get("id") is None else e["id"]
    return _event_columns(number, when(e["occurred_ms"]), terminal, origin, e["type"], e["user_id"] or "", e["detail"] or "")


def event_header() -> str:
    return _event_columns(*EVENT_HEADER)


def _event_columns(number, moment, terminal, origin, type_, user, detail) -> str:
    return (f"{number:>8}  {moment:<23}  {terminal:>8}  {origin:<6}  {pad(type_, TYPE_COLUMNS)}  {pad(user, 12)}  {detail}").rstrip()


def show(args, value, text: str, lines: list | None = None) -> None:
    """``value`` as a JSON document (--json), as JSON Lines (--jsonl: each of ``lines``, else
    ``value`` on one line), or as ``text`` for a person."""
    if getattr(args, "jsonl", False):
        for item in (lines if lines is not None else [value]):
            print(json.dumps(item, ensure_ascii=False), flush=True)
    elif args.json:
        print(json.dumps(value, indent=2, ensure_ascii=False))
    else:
        print(text)


# -- commands -----------------------------------------------------------------------------------


def _state(terminal: dict) -> str:
    if terminal["online"]:
        return "online"
    return f"offline: {terminal['offline_reason']}" if terminal.get("offline_reason") else "offline"


def terminals(client: ApiClient, args) -> None:
    if args.action is None:
        found = client.call("GET", "/api/terminals")
        rows = [
            [t["id"], t["name"], _state(t), t["admission"], t["link"], when(t["last_seen_ms"]),
             " ".join(filter(None, (t["model"], t["firmware"]))), t["cursor"], t["lag"]]
            for t in found["terminals"]
        ]
        show(args, found, table(["ID", "NAME", "STATE", "ADMISSION", "LINK", "LAST SEEN", "MODEL", "CURSOR", "LAG"], rows), found["terminals"])
        return
    path = f"/api/terminals/{args.terminal_id}"
    if args.action == "remove":
        show(args, client.call("DELETE", path), f"terminal {args.terminal_id} removed")
        return
    if args.groups and args.action != "admit":
        raise CommandFailed("--group goes with admit: a terminal's access groups are set when it is admitted")
    body = {"secret": args.secret} if args.secret else {}
    if args.groups:
        body["access_groups"] = sorted(set(args.groups))
    result = client.call("POST", f"{path}/{args.action}", body=body)
    groups = f" (access groups {', '.join(map(str, result['access_groups']))})" if args.groups else ""
    show(args, result, f"terminal {args.terminal_id} {result['admission']}{groups}")


def users(client: ApiClient, args) -> None:
    if args.action == "list":
        found = client.call("GET", "/api/users", {"search": args.search, "after": args.after, "limit": args.limit})
        rows = [[u["user_id"], u["name"], ",".join(map(str, u["access_groups"])), ",".join(u["cards"]), u["fingerprints"],
                 u["faces"], "yes" if u["has_pin"] else "", "yes" if u["disabled"] else ""] for u in found["users"]]
        show(args, found, table(["USER", "NAME", "GROUPS", "CARDS", "FINGERS", "FACES", "PIN", "DISABLED"], rows), found["users"])
        if found["more"] and not args.json:
            print(f"(more: --after {found['next']})", file=sys.stderr)
        return
    path = "/api/users/" + parse.quote(args.user_id, safe="")
    if args.action == "show" and args.provenance:
        given = client.call("GET", f"{path}/provenance")
        rows = [[f["field"], _plain(f["value"]), _given_by(f), when(f["at_ms"]), f["rule"] or ""] for f in given["fields"]]
        show(args, given, table(["FIELD", "VALUE", "GIVEN BY", "WHEN", "RULE"], rows), given["fields"])
    elif args.action == "show":
        user = client.call("GET", path)
        show(args, user, user_text(user))
    elif args.action == "history":
        history(client, args, path)
    elif args.action == "add":
        user = client.call("POST", "/api/users", body={"user_id": args.user_id, **user_body(args)})
        show(args, user, f"user {args.user_id} created (change {user['change_seq']})")
    elif args.action == "edit":
        # Only one end of the validity given: the other stays as the user has it.
        half = (args.valid_from is None) != (args.valid_until is None)
        user = client.call("PATCH", path, body=user_body(args, client.call("GET", path)["validity"] if half else None))
        show(args, user, f"user {args.user_id} changed (change {user['change_seq']})")
    else:
        show(args, client.call("DELETE", path), f"user {args.user_id} deleted")


def history(client: ApiClient, args, path: str) -> None:
    """``users history``: a line per field change, the version's number, time and source on its first."""
    entries, after = [], None
    while True:  # every page: a user's history is what was asked for
        page = client.call("GET", f"{path}/history", {"after": after, "limit": 10000})
        entries += page["history"]
        if not page["more"]:
            break
        after = page["next"]
    rows = []
    for entry in entries:
        head = [entry["version"] or "-", when(entry["at_ms"]), _given_by(entry)]
        for change in entry["changes"] or [{"field": "", "outcome": "", "rule": "", "old": None, "new": None}]:
            rows.append(head + [change["field"], change["outcome"], _plain(change["old"]), _plain(change["new"]), change["rule"]])
            head = ["", "", ""]
    document = {"user_id": args.user_id, "history": entries}
    show(args, document, table(["VERSION", "WHEN", "FROM", "FIELD", "OUTCOME", "WAS", "NOW / OFFERED", "RULE"], rows), entries)


def _given_by(entry: dict) -> str:
    source = entry["source"]
    if source is None:
        return "(before the history)"
    return f"{source} {entry['terminal_id']}" if entry["terminal_id"] is not None else source


# ``--clear FIELD``: the API's name for the field and its empty value.
CLEARABLE = {"name": ("name", None), "pin": ("pin", None), "groups": ("access_groups", []), "cards": ("cards", []),
             "validity": ("validity", None), "security-level": ("security_level", None), "auth-mode": ("auth_mode", None)}
OPEN_START, OPEN_END = 0, 2**32 - 1  # a validity with one end given is open at the other


def user_body(args, validity: dict | None = None) -> dict:
    """The API body for ``users add`` or ``users edit``; ``validity`` is the user's current one,
    whose other end an edit that gives only one of --valid-from and --valid-until keeps."""
    body = {}
    for name in ("name", "pin", "disabled", "security_level", "auth_mode"):
        if getattr(args, name) is not None:
            body[name] = getattr(args, name)
    if args.groups:
        body["access_groups"] = args.groups
    if args.card:
        body["cards"] = [_card(text) for text in args.card]
    if args.valid_from is not None or args.valid_until is not None:
        validity = validity or {"start": OPEN_START, "end": OPEN_END}
        body["validity"] = {"start": validity["start"] if args.valid_from is None else args.valid_from,
                            "end": validity["end"] if args.valid_until is None else args.valid_until}
    for field in getattr(args, "clear", ()):
        key, empty = CLEARABLE[field]
        if key in body:
            raise CommandFailed(f"--clear {field} and a new {field}: give one of them")
        body[key] = empty
    members = (("cards", "card", _card), ("access_groups", "group", int))
    for key, option, member in members:
        add, remove = getattr(args, f"add_{option}", []), getattr(args, f"remove_{option}", [])
        if (add or remove) and key in body:
            raise CommandFailed(f"--{option} and --clear {option}s replace all the user's {option}s, --add-{option} and "
                                f"--remove-{option} keep the others: give one kind")
        if add:
            body[f"add_{key}"] = [member(value) for value in add]
        if remove:
            body[f"remove_{key}"] = [member(value) for value in remove]
    return body


def _card(text: str) -> dict:
    kind, sep, data = text.partition(":")
    if not sep or not data:
        raise CommandFailed(f"card must be TYPE:HEX, e.g. SMART_CARD:0a1b2c, got {text!r}")
    return {"type": kind.upper(), "data": data}


def user_text(user: dict) -> str:
    """``users show``: one field a line, validity and the time of the last change as dates."""
    shown = {**user, "validity": _validity_text(user.get("validity")), "updated_ms": when(user.get("updated_ms"))}
    width = max(map(len, shown)) + 1
    return "\n".join(f"{k:<{width}}{_plain(v)}".rstrip() for k, v in shown.items())


def _validity_text(validity: dict | None) -> str:
    if validity is None:
        return "always"
    start, end = validity["start"], validity["end"]
    day = lambda seconds: time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))
    if start == OPEN_START:
        return "always" if end == OPEN_END else f"until {day(end)}"
    return f"from {day(start)}" + ("" if end == OPEN_END else f" until {day(end)}")


def _plain(value) -> str:
    if isinstance(value, list):
        return ", ".join(map(str, value))
    if isinstance(value, dict) and set(value) == {"start", "end"}:
        return _validity_text(value)
    return "" if value is None else str(value)


def events(client: ApiClient, args) -> None:
    """Events oldest first, then those the database has not taken yet (an outage), then with
    --follow each new one; JSON Lines with --json or --jsonl, as events are a stream."""
    query = {"type": args.type, "terminal": args.terminal, "user": args.user}
    page = client.call("GET", "/api/events", {**query, "since": args.since, "until": args.until, "limit": args.limit})
    found = list(reversed(page["events"]))  # oldest first, as a log reads
    lines = args.json or getattr(args, "jsonl", False)
    if not lines:
        print(event_header(), flush=True)
    for event in found + page.get("unsaved", []):
        print(json.dumps(event, ensure_ascii=False) if lines else event_line(event), flush=True)
    if page.get("database_error"):
        print(f"gateway: the database cannot be read ({page['database_error']}); "
              f"{len(page.get('unsaved', []))} monitoring events wait to be saved, shown as unsaved", file=sys.stderr, flush=True)
    if not args.follow:
        return
    after = found[-1]["id"] if found else None
    if after is None and not page.get("database_error"):  # nothing matched yet: follow from the newest event of all
        newest = client.call("GET", "/api/events", {"limit": 1})["events"]
        after = newest[0]["id"] if newest else 0
    # ``after`` None (the database unreadable): the stream starts with what comes next.
    for event in client.stream("/api/stream", {**query, "after": after}):
        if event.get("gap"):
            print("gateway: some events were skipped (too far behind); see `gateway events`", file=sys.stderr)
        else:
            print(json.dumps(event, ensure_ascii=False) if lines else event_line(event), flush=True)


def sync_mode(client: ApiClient, args) -> None:
    if args.mode is None:
        result = client.call("GET", "/api/sync")
        show(args, result, result["mode"])
    else:
        result = client.call("PUT", "/api/sync", body={"mode": args.mode})
        said = "".join(f"\nstopped: {what}" for what in result.get("stopped", []))
        show(args, result, f"sync mode set to {result['mode']}: {result['means']}{said}")


def reconcile(client: ApiClient, args) -> None:
    """POST /api/reconcile: one line per terminal saying what was compared, repaired and left."""
    result = client.call("POST", "/api/reconcile")
    lines = []
    for t in result["terminals"]:
        repaired = ", ".join(f"{n} {kind}" for kind, n in sorted(t["repaired"].items()) if n) or "nothing repaired"
        lines.append(f"terminal {t['id']}: " + (t["note"] or f"{t['compared']} users compared, {repaired}, {t['differences']} differ as the rules allow"))
    lines.append(f"{result['repaired']} repaired, {result['differences']} left as the rules allow")
    show(args, result, "\n".join(lines))



def lockouts(client: ApiClient, args) -> None:
    if args.action == "clear":
        result = client.call("DELETE", f"/api/lockouts/{parse.quote(args.address, safe='')}")
        show(args, result, f"lockout of {args.address} lifted")
        return
    found = client.call("GET", "/api/lockouts")
    rows = [[entry["address"] or f"terminal {entry['terminal_id']}", f"{entry['remaining_s']:.0f} s", entry["why"]] for entry in found["lockouts"]]
    show(args, found, table(["LOCKED OUT", "FOR ANOTHER", "WHY"], rows) if rows else "no lockouts")


COMMANDS = {"terminals": terminals, "users": users, "events": events, "sync-mode": sync_mode, "reconcile": reconcile, "lockouts": lockouts}


def dispatch(args) -> int:
    client = ApiClient(args.url, args.token or os.environ.get(TOKEN_ENV) or local_token(args.url))
    try:
        COMMANDS[args.command](client, args)
    except CommandFailed as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # the way to stop `gateway events --follow`
        return 130
    except BrokenPipeError:  # `gateway events | head`
        sys.stderr.close()
        return 0
    return 0
