"""The HTTP side of PUSH: a twisted.web site under ``/iclock/`` that finds the device a request
is from (its ``SN``), asks the door, and hands the request to the device's ``PushServer`` and
``PushDevice``; the answer goes back once the device has it (after what an upload brings is
durable). A port of its own, never the API's.

A request's source is the peer's address, or, from a reverse proxy listed in ``[push] proxies``,
the last address of its ``X-Forwarded-For`` (the one the proxy saw; the ones before it are the
client's word). Bodies are bounded while they arrive (``MAX_BODY_BYTES``, protocol/zk/push/server.py): a longer
one is discarded as it comes and answered 413, so no device can make the gateway hold more.
"""

import ipaddress

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource, server

from gateway.push.settings import within
from protocol.zk.push.server import MAX_BODY_BYTES, Request, RequestError

log = Logger(namespace="gateway.push")


class _Discard:
    """Where a body over the limit goes: nowhere."""

    def write(self, data):
        pass

    def seek(self, *args):
        pass

    def tell(self):
        return 0

    def read(self, *args):
        return b""

    def close(self):
        pass


class BoundedRequest(server.Request):
    too_big = False

    def gotLength(self, length):
        if length is not None and length > MAX_BODY_BYTES:
            self.too_big = True
            self.content = _Discard()
            return
        super().gotLength(length)

    def handleContentChunk(self, data):
        if not self.too_big and self.content.tell() + len(data) > MAX_BODY_BYTES:  # chunked, without a length
            self.too_big = True
            self.content = _Discard()
        self.content.write(data)


class IclockResource(resource.Resource):
    isLeaf = True

    def __init__(self, devices, proxies: list[str]):
        super().__init__()
        self._devices = devices  # a PushService
        self._proxies = proxies

    def render(self, request):
        request.setHeader(b"content-type", b"text/plain")
        if request.too_big:
            request.setResponseCode(413)
            return f"body over {MAX_BODY_BYTES} bytes\n".encode()
        query = {k.decode("utf-8", "replace"): v[-1].decode("utf-8", "replace") for k, v in request.args.items()}
        request.content.seek(0)
        body = request.content.read() if request.method == b"POST" else b""
        address = self._source(request)
        push_request = Request(request.method.decode("ascii", "replace"), request.path.decode("utf-8", "replace"), query, body)
        d = defer.maybeDeferred(self._devices.answer, push_request, address)
        d.addCallback(self._reply, request)
        d.addErrback(self._failed, request)
        return server.NOT_DONE_YET

    def _source(self, request) -> str:
        peer = request.getClientAddress().host
        if not within(peer, self._proxies):
            return peer
        forwarded = b",".join(request.requestHeaders.getRawHeaders(b"x-forwarded-for", [])).decode("latin-1")
        last = forwarded.rsplit(",", 1)[-1].strip()
        return last if _is_address(last) else peer

    @staticmethod
    def _reply(answer, request):
        status, body = answer
        if request.finished or request.channel is None:
            return
        request.setResponseCode(status)
        request.write(body if body.endswith(b"\n") else body + b"\n")
        request.finish()

    @staticmethod
    def _failed(failure, request):
        if failure.check(RequestError):
            IclockResource._reply((failure.value.status, failure.value.reason.encode("utf-8", "replace")), request)
            return
        # The device retries after ErrorDelay; what it sent was not acknowledged, so nothing is lost.
        log.warn("PUSH request {path} failed: {e}", path=request.path, e=failure.getErrorMessage())
        IclockResource._reply((503, b"not stored, retry"), request)


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def push_site(devices, proxies: list[str]) -> server.Site:
    root = resource.Resource()
    root.putChild(b"iclock", IclockResource(devices, proxies))
    site = server.Site(root)
    site.requestFactory = BoundedRequest
    site.displayTracebacks = False
    site.noisy = False
    return site
