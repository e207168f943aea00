"""The JSON API's plumbing: routes, typed query parameters, bearer-token writes, bounded bodies and
JSON errors.

A view is a plain function of a ``Call`` returning something JSON can encode, or a Deferred of
it. Everything about HTTP that is the same for every view lives here, once: a view never sees a
malformed request, and a client never sees a traceback.
"""

import hmac
import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from datetime import datetime, timezone
from urllib.parse import unquote, unquote_to_bytes

import msgspec
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource, server
from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.routing import Map, Rule

from gateway.store.database import DatabaseFailure
from gateway.http.shared import SharedReads
from gateway.http.validate import PLAIN_TEXT, Invalid, check
from gateway.sync.users import NotHeld, UnknownUser, UserExists
from protocol.errors import MessageError

log = Logger(namespace="gateway.http")

# A user record without templates is well under 2 KiB; templates never travel through the API.
MAX_BODY = 64 * 1024
MAX_INTEGER = 2**63 - 1  # what the database's BIGINT columns hold
MAX_DEPTH = 8  # the deepest a body the API takes nests is 3 (a user's cards)


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


# Domain errors and the status each one means to an API client.
_STATUS = ((Invalid, 400), (MessageError, 400), (UnknownUser, 404), (UserExists, 409), (NotHeld, 409), (DatabaseFailure, 503))


@dataclass(frozen=True)
class Param:
    """A query parameter (or a path segment): its name, kind (integer, string, time) and meaning.

    ``schema`` is its JSON Schema: what the value is checked against once read from the query
    text, and what the OpenAPI document shows. A string is plain text (no NUL, no bidirectional
    override) unless ``choices`` gives the schema of the strings it may be."""

    name: str
    kind: str
    description: str
    repeated: bool = False
    default: object = None
    minimum: int | None = None
    maximum: int | None = MAX_INTEGER
    choices: dict | None = None

    @cached_property
    def schema(self) -> dict:
        if self.kind == "time":
            return {"oneOf": [_INT64, {"type": "string", "format": "date-time"}]}
        if self.kind == "string":
            return self.choices or {"type": "string", "pattern": PLAIN_TEXT}
        bounds = {"minimum": self.minimum, "maximum": self.maximum}
        return {"type": "integer", **{k: v for k, v in bounds.items() if v is not None}}

    def parse(self, text: str):
        if self.kind == "string":
            check(self.schema, text, self.name)
            return text
        if self.kind == "time":
            return parse_time(text, self.name)
        return parse_integer(text, self.name, self.schema)


_INT64 = {"type": "integer", "minimum": -MAX_INTEGER, "maximum": MAX_INTEGER}


def parse_integer(text: str, name: str, schema: dict = _INT64) -> int:
    """A decimal integer within ``schema``'s bounds (none wider than the database's 64-bit
    columns); 400 otherwise, naming those bounds."""
    digits = text.removeprefix("-")
    if not (digits.isascii() and digits.isdigit()):
        raise ApiError(400, f"{name} must be an integer, got {text[:40]!r}")
    # Past 19 digits it is out of range whatever it says, and said so without converting all of it.
    value = int(text) if len(digits.lstrip("0")) <= 19 else (MAX_INTEGER + 1) * (-1 if text.startswith("-") else 1)
    check(schema, value, name)
    check(_INT64, value, name)
    return value


def parse_time(text: str, name: str) -> int:
    """Milliseconds since the epoch, from either such a number or an ISO 8601 time (UTC if no zone)."""
    if text.lstrip("-").isdigit():
        return parse_integer(text, name)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ApiError(400, f"{name} must be milliseconds since the epoch or an ISO 8601 time, got {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp() * 1000)


@dataclass
class Route:
    method: str
    path: str  # "/api/terminals/{terminal_id}"; path parameters are declared in ``params``
    view: Callable
    summary: str
    params: tuple[Param, ...] = ()  # path parameters, then query parameters
    body: dict | None = None  # JSON Schema of the request body
    returns: str | None = None  # name of the response schema in the OpenAPI document
    status: int = 200
    errors: dict[int, str] = field(default_factory=dict)  # what else the view may answer, and when
    # It shows the gateway's memory (terminals online, sync mode, ...): in the API process it
    # waits for a snapshot fresh enough (gateway/http/process.py). False: the database alone.
    reads_memory: bool = True

    @property
    def writes(self) -> bool:
        return self.method != "GET"

    @property
    def path_params(self) -> tuple[Param, ...]:
        return tuple(p for p in self.params if "{" + p.name + "}" in self.path)

    @property
    def query_params(self) -> tuple[Param, ...]:
        return tuple(p for p in self.params if "{" + p.name + "}" not in self.path)

    @property
    def rule(self) -> str:
        """The path as werkzeug's router writes it: "/api/terminals/<terminal_id>"."""
        return self.path.replace("{", "<").replace("}", ">")


@dataclass
class Call:
    """One request as a view sees it: parameters parsed and typed, body parsed and checked."""

    gateway: object
    stream: object
    request: server.Request
    params: dict
    body: dict | None
    shared: SharedReads  # database reads the requests that arrive together share


class BoundedBody(io.BytesIO):
    """A request body that keeps at most ``limit`` bytes and remembers whether more came."""

    def __init__(self, limit: int = MAX_BODY):
        super().__init__()
        self.limit = limit
        self.exceeded = False

    def write(self, data: bytes) -> int:
        room = self.limit - self.tell()
        if len(data) > room:
            self.exceeded = True
            data = data[: max(room, 0)]
        return super().write(data)


class ApiResource(resource.Resource):
    isLeaf = True

    def __init__(self, gateway, stream, routes: list[Route], shared: SharedReads):
        super().__init__()
        self.gateway = gateway
        self.stream = stream
        self.routes = routes
        self.shared = shared
        # Endpoints are indexes into ``routes``; a trailing slash is the same path.
        self._router = Map([Rule(route.rule, endpoint=n, methods=[route.method]) for n, route in enumerate(routes)],
                           strict_slashes=False, merge_slashes=False).bind("")

    def render(self, request):
        finished = request.notifyFinish()
        finished.addErrback(lambda _: None)  # the client went away; nothing to answer
        d = defer.maybeDeferred(self._dispatch, request)
        d.addCallbacks(self._reply, self._fail, callbackArgs=(request, finished), errbackArgs=(request, finished))
        return server.NOT_DONE_YET

    def _dispatch(self, request):
        route, path = self._route(request)
        self._authorize(route, request)
        params = {p.name: p.parse(path[p.name]) for p in route.path_params}
        params.update(self._query(route, request))
        call = Call(self.gateway, self.stream, request, params, self._body(route, request), self.shared)
        return defer.maybeDeferred(route.view, call).addCallback(lambda value: (route.status, value))

    def _route(self, request) -> tuple[Route, dict]:
        # Matched on the path as sent, so a %2F inside a user id stays in its segment; the
        # values are decoded after.
        path = request.path.decode("latin-1")
        method = request.method.decode("latin-1").upper()
        try:
            n, values = self._router.match(path.rstrip("/") or "/", method)
        except MethodNotAllowed as refused:
            allowed = sorted(m for m in refused.valid_methods or () if m not in ("HEAD", "OPTIONS"))
            raise ApiError(405, f"{method} is not allowed here; use {', '.join(allowed)}", {"Allow": ", ".join(allowed)}) from None
        except NotFound:
            raise ApiError(404, f"no such API endpoint: {path} (see /api/openapi.json)") from None
        return self.routes[n], {name: unquote(text) for name, text in values.items()}

    def _authorize(self, route: Route, request) -> None:
        if not route.writes:
            return
        token = self.gateway.config.api_token
        if not token:
            raise ApiError(403, "writes are disabled: set api_token in the gateway configuration and send it as 'Authorization: Bearer <token>'")
        scheme, _, given = (request.getHeader("authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise ApiError(401, "this request changes the gateway: send 'Authorization: Bearer <api_token>'", {"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise ApiError(403, "wrong API token")

    @staticmethod
    def _query(route: Route, request) -> dict:
        declared = {p.name: p for p in route.query_params}
        values = {}
        for part in re.split(rb"[&;]", request.uri.partition(b"?")[2]):  # as Twisted's parser splits
            if part and b"=" not in part:  # Twisted's parser drops such a part: it would be ignored unseen
                name = unquote_to_bytes(part.replace(b"+", b" ")).decode("utf-8", "replace")
                raise ApiError(400, f"query parameter {name!r} has no value: write it as name=value")
        for raw_name, raw_values in request.args.items():
            name = raw_name.decode("utf-8", "replace")
            param = declared.get(name)
            if param is None:
                known = ", ".join(declared) or "none"
                raise ApiError(400, f"unknown query parameter {name!r}; known: {known}")
            try:
                texts = [v.decode("utf-8") for v in raw_values]
            except UnicodeDecodeError:
                raise ApiError(400, f"{name} is not valid UTF-8") from None
            if not param.repeated and len(texts) > 1:
                raise ApiError(400, f"{name} may be given once")
            parsed = [param.parse(text) for text in texts]
            values[name] = parsed if param.repeated else parsed[0]
        for param in route.query_params:
            values.setdefault(param.name, [] if param.repeated else param.default)
        return values

    @staticmethod
    def _body(route: Route, request) -> dict | None:
        content = request.content  # a BoundedBody: GatewaySite.getContentFile
        if content.exceeded:
            raise ApiError(413, f"request body larger than {MAX_BODY} bytes")
        if route.body is None:
            return None
        raw = content.getvalue()
        if not raw:  # no body at all; JSON whitespace alone is no JSON value, and a 400 below
            if route.body.get("required"):
                raise ApiError(400, f"this request needs a JSON body with {', '.join(route.body['required'])}")
            raw = b"{}"
        try:
            text = raw.decode("utf-8")  # json.loads would take UTF-16 and UTF-32 too: docs/http-api.md says UTF-8
        except UnicodeDecodeError as exc:
            raise ApiError(400, f"request body is not UTF-8: {exc.reason} at byte {exc.start}") from None
        try:
            body = json.loads(text, parse_float=_number, parse_int=_integer, object_pairs_hook=_object)
        except ValueError as exc:
            raise ApiError(400, f"request body is not valid JSON: {exc}") from None
        except RecursionError:
            raise ApiError(400, f"request body nests deeper than {MAX_DEPTH} levels") from None
        _plain_json(body)
        check(route.body, body)
        return body

    def _reply(self, result, request, finished) -> None:
        status, value = result
        if value is server.NOT_DONE_YET:  # the view answers on its own (the event stream)
            return
        write_json(request, finished, status, self.shared.text_of(value, to_json))

    def _fail(self, failure, request, finished) -> None:
        if failure.check(ApiError):
            error = failure.value
        else:
            status = next((code for kind, code in _STATUS if failure.check(kind)), None)
            if status is None:
                log.failure("API request {method} {path} failed", failure, method=request.method, path=request.uri)
                error = ApiError(500, "internal error; the gateway log has the details")
            elif failure.check(DatabaseFailure):
                # The driver's text can name the database host and user: it goes to the log only.
                log.warn("API request {method} {path}: database unavailable: {e}", method=request.method, path=request.uri,
                         e=failure.getErrorMessage())
                error = ApiError(status, "the database is unavailable; retry shortly")
            else:
                error = ApiError(status, failure.getErrorMessage())
        for name, value in error.headers.items():
            request.setHeader(name, value)
        write_json(request, finished, error.status, to_json({"error": str(error), "status": error.status}))


def _number(text: str) -> int | float:
    """JSON Schema calls 1.0 an integer, so the API takes it as one: as the int it is."""
    value = float(text)
    return int(value) if value.is_integer() else value


def _integer(text: str) -> int:
    """An integer no field can hold (over 19 digits) is refused before Python converts it."""
    digits = len(text.lstrip("-"))
    if digits > 19:
        raise ApiError(400, f"request body holds a number of {digits} digits: no field holds more than 19")
    return int(text)


def _object(pairs: list[tuple[str, object]]) -> dict:
    """A JSON object; one naming a key twice is refused (which of the two was meant?)."""
    found = dict(pairs)
    if len(found) != len(pairs):
        seen: set[str] = set()
        twice = next(key for key, _ in pairs if key in seen or seen.add(key))
        raise ApiError(400, f"request body names {twice[:40]!r} twice in one object")
    return found


def _plain_json(body) -> None:
    """Refuse what json.loads takes and nothing after it can hold: nesting deeper than any body
    the API reads, and lone surrogates ("\\ud800" is no character: it has no UTF-8 form)."""
    stack = [(body, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ApiError(400, f"request body nests deeper than {MAX_DEPTH} levels")
        texts = [value] if isinstance(value, str) else list(value) if isinstance(value, dict) else []
        for text in texts:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise ApiError(400, f"request body holds a lone surrogate in {text[:40]!r}: not a character") from None
        if isinstance(value, dict):
            stack += [(item, depth + 1) for item in value.values()]
        elif isinstance(value, list):
            stack += [(item, depth + 1) for item in value]


def to_json(value) -> bytes:
    """The API's JSON text, UTF-8, compact and unescaped as ``json.dumps(ensure_ascii=False)``
    wrote it (floats with an exponent aside: ``1e-7``, not ``1e-07``; both are JSON), at a ninth of its cost (the list of 200 terminals: 121 vs 1,034 us). JSON has no NaN or
    infinity: such a float is written null (``json.dumps`` wrote NaN, which JSON parsers refuse)."""
    return _ENCODER.encode(value)


_ENCODER = msgspec.json.Encoder()


def write_json(request, finished: defer.Deferred, status: int, text: bytes) -> None:
    """Answers with ``text``, the JSON ``to_json`` wrote."""
    if finished.called:  # the connection is gone: writing would raise
        return
    request.setResponseCode(status)
    request.setHeader("Content-Type", "application/json; charset=utf-8")
    request.setHeader("Cache-Control", "no-store")
    request.write(text)
    request.finish()
