"""GatewaySite: what the gateway serves over HTTP: the JSON API under /api/, /metrics, and the
monitoring page at / (static files, no build step)."""

import ipaddress
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource, server

from gateway.http import activity, events, history, lockouts, sync, terminals, users
from gateway.http.api import ApiResource, BoundedBody, Route, to_json
from gateway.http.channel import ConnectionsPerAddress
from gateway.http.openapi import document
from gateway.http.shared import SharedReads
from gateway.http.sse import EventStream

log = Logger(namespace="gateway.http")

PAGE = Path(__file__).with_name("page")
PAGE_FILES = {"index.html": "text/html", "app.js": "text/javascript", "style.css": "text/css",
              "uPlot.iife.min.js": "text/javascript", "uPlot.min.css": "text/css"}  # uPlot: charts, kept here (uPlot.LICENSE)
# The page loads nothing from elsewhere and runs no inline script.
PAGE_POLICY = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"


def api_routes() -> list[Route]:
    def openapi(call):
        return spec

    routes = terminals.ROUTES + users.ROUTES + history.ROUTES + events.ROUTES + sync.ROUTES + activity.ROUTES + lockouts.ROUTES
    routes.append(Route("GET", "/api/openapi.json", openapi, "This document (OpenAPI 3.1)", reads_memory=False))
    spec = document(routes)
    return routes


class Readable(resource.Resource):
    """A resource people and scrapers only read: any method but GET and HEAD gets a JSON 405
    (not twisted.web's HTML 501 page)."""

    isLeaf = True

    def render(self, request):
        if request.method in (b"GET", b"HEAD"):
            return super().render(request)
        request.setHeader("Allow", "GET, HEAD")
        return JsonError(405, f"{request.method.decode('latin-1')} is not allowed here; use GET").render(request)


class PageFile(Readable):

    def __init__(self, name: str):
        super().__init__()
        self.body = (PAGE / name).read_bytes()
        self.content_type = f"{PAGE_FILES[name]}; charset=utf-8"

    def render_GET(self, request):
        request.setHeader("Content-Type", self.content_type)
        request.setHeader("Content-Security-Policy", PAGE_POLICY)
        request.setHeader("X-Content-Type-Options", "nosniff")
        return self.body


class MetricsResource(Readable):
    """``metrics.exposition()`` gives bytes (the ingest process's own) or a Deferred of them (the
    API process asks the ingest process); either may fail, and the scrape is then answered 503."""

    def __init__(self, metrics):
        super().__init__()
        self.metrics = metrics

    def render_GET(self, request):
        request.setHeader("Content-Type", CONTENT_TYPE_LATEST)
        exposition = defer.maybeDeferred(self.metrics.exposition)
        gone = []
        request.notifyFinish().addErrback(gone.append)

        def answer(body):
            if not gone:
                request.write(body)
                request.finish()

        def failed(failure):  # a scrape answered, never left waiting for the client's time-out
            log.failure("cannot build /metrics", failure)
            if not gone:
                request.setResponseCode(503)
                request.setHeader("Content-Type", "text/plain; charset=utf-8")
                request.write(b"metrics unavailable: see the gateway's log\n")
                request.finish()

        exposition.addCallbacks(answer, failed)
        return server.NOT_DONE_YET


class JsonError(resource.Resource):
    isLeaf = True

    def __init__(self, status: int, message: str):
        super().__init__()
        self.status, self.message = status, message

    def render(self, request):
        request.setResponseCode(self.status)
        request.setHeader("Content-Type", "application/json; charset=utf-8")
        return to_json({"error": self.message, "status": self.status})


class Root(resource.Resource):
    def getChild(self, name, request):
        return self.nothing(request)

    def render(self, request):  # the folder itself (/page): Twisted's own answer would be an HTML page
        return self.nothing(request).render(request)

    @staticmethod
    def nothing(request) -> JsonError:
        return JsonError(404, f"nothing at {request.path.decode('latin-1')}; the page is at /")


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class GatewaySite(ConnectionsPerAddress, server.Site):
    """The HTTP factory: connections bounded per address and in time (gateway/http/channel.py),
    bodies bounded as they arrive, no access log, streams closed on stop."""

    noisy = False  # "Starting factory" says nothing the "monitoring page at" line does not

    def __init__(self, gateway, routes: list[Route] | None = None, loopback_only: bool | None = None,
                 since: Callable[[], float] | None = None):
        """``gateway``: the running gateway, or the API process's mirror of it (gateway/http/process.py),
        whose ``routes`` forward writes to the gateway and ``since`` says when its snapshot came in
        (gateway/http/shared.py); the running gateway's memory is always now."""
        self.loopback_only = is_loopback(gateway.config.http_host) if loopback_only is None else loopback_only
        self.stream = EventStream(gateway.db, gateway.reactor, gateway.eventlog.unsaved)
        root = Root()
        root.putChild(b"", PageFile("index.html"))
        page = Root()
        for name in PAGE_FILES:
            page.putChild(name.encode(), PageFile(name))
        root.putChild(b"page", page)
        shared = SharedReads(gateway.db, gateway.reactor, since or gateway.reactor.seconds)
        root.putChild(b"api", ApiResource(gateway, self.stream, routes or api_routes(), shared))
        root.putChild(b"metrics", MetricsResource(gateway.metrics))
        super().__init__(root, parsePOSTFormSubmission=False, reactor=gateway.reactor)
        self.count_connections(gateway.reactor)

    def getResourceFor(self, request):
        # On loopback, a request naming another host is a web page in the operator's browser
        # reaching in through DNS rebinding: reads would leak to it, so nothing is served.
        if self.loopback_only and not is_loopback(request.getRequestHostname().decode("latin-1").strip("[]")):
            return JsonError(403, "this gateway answers requests for localhost or 127.0.0.1 only (Host header)")
        if request.path.startswith(b"//"):  # an empty first segment would reach the page's index, whatever followed
            return Root.nothing(request)
        return super().getResourceFor(request)

    def getContentFile(self, length):
        return BoundedBody()

    def log(self, request):
        # A line per request would drown the gateway's own log when scripts poll the API.
        pass

    def stopFactory(self):
        self.stream.close()
        self._lines.stop()
        super().stopFactory()
