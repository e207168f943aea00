"""EventStream: newly stored events fanned out to every listening client as server-sent events.

One poller reads the events table by id on a reader thread every ``poll_s`` while anyone
listens. Reading the table rather than hooking into commits means the stream shows every stored
event, whoever stored it: the event log, the puller, the pusher, another process on the same
database. Each client has a bounded buffer for the time its socket is full; a client that falls
further behind is dropped (it reconnects and resumes with Last-Event-ID), so one slow reader
never grows the gateway's memory.
"""

from collections import deque

from twisted.internet import defer, task
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.web import server
from zope.interface import implementer

from gateway.http.api import to_json
from gateway.http.queries import EVERYTHING, EventFilter, last_event_id, read_events

log = Logger(namespace="gateway.http.stream")


def encode(event: dict) -> bytes:
    return b"id: %d\ndata: %s\n\n" % (event["id"], to_json(event))


@implementer(IPushProducer)
class StreamClient:
    """One listening client: writes while its socket takes data, buffers (bounded) while it does not."""

    max_buffered = 1000

    def __init__(self, request, flt: EventFilter, on_gone):
        self.request = request
        self.filter = flt
        self._on_gone = on_gone
        self._buffer: deque[bytes] = deque()
        self.started = False  # until the replay of stored events is written, live ones wait
        self._paused = False
        self.gone = False

    def open(self) -> None:
        request = self.request
        request.setHeader("Content-Type", "text/event-stream; charset=utf-8")
        request.setHeader("Cache-Control", "no-store")
        request.setHeader("X-Accel-Buffering", "no")  # proxies must not hold events back
        request.registerProducer(self, True)
        request.notifyFinish().addBoth(lambda _: self._gone())
        request.write(b"retry: 2000\n\n")

    def start(self, replay: list[dict], skipped: bool) -> None:
        """Write the stored events to replay (or, when there were too many, a gap), then what arrived meanwhile."""
        ahead = [b"event: gap\ndata: {}\n\n"] if skipped else [encode(e) for e in replay]
        self._buffer.extendleft(reversed(ahead))
        self.started = True
        self._flush()

    def offer(self, events: list[tuple[dict, bytes]]) -> None:
        """New events, each with its encoding (made once for every client)."""
        if self.gone:
            return
        for event, encoded in events:
            if self.filter.matches(event):
                self._buffer.append(encoded)
        if len(self._buffer) > self.max_buffered:
            self.drop(f"{len(self._buffer)} events waiting for a slow client")
        else:
            self._flush()

    def keepalive(self) -> None:
        if self.started and not self._paused and not self._buffer:
            self.request.write(b": keepalive\n\n")

    def drop(self, reason: str) -> None:
        if not self.gone:
            log.warn("dropping event stream client {peer}: {reason}", peer=self.request.getClientAddress(), reason=reason)
            self.request.channel.transport.abortConnection()

    def close(self) -> None:
        """The gateway stops: end the response cleanly."""
        if not self.gone:
            self.request.unregisterProducer()
            self.request.finish()

    def _flush(self) -> None:
        while self.started and not self._paused and not self.gone and self._buffer:
            self.request.write(self._buffer.popleft())

    def _gone(self) -> None:
        if not self.gone:
            self.gone = True
            self._buffer.clear()
            self._on_gone(self)

    # -- IPushProducer: the transport says when its buffer is full and when it drained --------

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._flush()

    def stopProducing(self) -> None:
        self._gone()


class EventStream:
    poll_s = 0.5
    keepalive_s = 15.0
    batch = 500
    max_replay = 1000  # a client further behind than this pages /api/events instead

    def __init__(self, db, clock, unsaved):
        """``unsaved``: the monitoring events waiting for the database (the gateway's, or the API
        process's mirror of them), offered to the clients as they come while there are any."""
        self._db = db
        self._unsaved = unsaved
        self.clients: set[StreamClient] = set()
        self._head = 0  # highest event id handed out; meaningful while the poller runs
        self._waiting: list[defer.Deferred] = []
        self._polling = False
        self._poller = task.LoopingCall(self._poll)
        self._poller.clock = clock
        self._keepalive = task.LoopingCall(self._keep_alive)
        self._keepalive.clock = clock

    def subscribe(self, request, flt: EventFilter, after: int | None):
        client = StreamClient(request, flt, self._unsubscribe)
        self.clients.add(client)
        if self.offer_unsaved not in self._unsaved.listeners:  # failures show before the database takes them
            self._unsaved.listeners.append(self.offer_unsaved)
        client.open()
        d = self._start()
        d.addCallback(lambda head: self._replay(client, after, head))
        d.addErrback(lambda f: client.drop(f"cannot read events: {f.getErrorMessage()}"))
        return server.NOT_DONE_YET

    def close(self) -> None:
        for client in list(self.clients):
            client.close()
        self._stop()

    def _start(self) -> defer.Deferred:
        """Fires with the head id; the first subscriber reads it and starts the poller."""
        if self._poller.running:
            return defer.succeed(self._head)
        d = defer.Deferred()
        self._waiting.append(d)
        if len(self._waiting) == 1:
            self._db.read(last_event_id).addCallbacks(self._started, self._start_failed)
        return d

    def _started(self, head: int) -> None:
        waiting, self._waiting = self._waiting, []
        if self.clients and not self._poller.running:
            self._head = head
            self._poller.start(self.poll_s, now=False)
            self._keepalive.start(self.keepalive_s, now=False)
        for d in waiting:
            d.callback(self._head)

    def _start_failed(self, failure) -> None:
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.errback(failure)

    def _replay(self, client: StreamClient, after: int | None, head: int):
        # Live events above ``head`` queue in the client meanwhile: nothing is missed or doubled.
        if client.gone:
            return None
        if after is None or after >= head:
            client.start([], skipped=False)
            return None
        d = self._db.read(read_events, client.filter, after, head + 1, self.max_replay)
        return d.addCallback(lambda result: client.start([] if result[1] else result[0], skipped=result[1]))

    def _poll(self):
        if self._polling:
            return None
        self._polling = True
        d = self._db.read(read_events, EVERYTHING, self._head, None, self.batch)
        d.addCallbacks(self._polled, self._poll_failed)
        return d

    def _polled(self, result) -> None:
        self._polling = False
        if not self._poller.running:
            return
        found, more = result
        found = [e for e in found if e["id"] > self._head]  # a poll begun before a restart
        if found:
            self._head = found[-1]["id"]
            encoded = [(event, encode(event)) for event in found]
            for client in list(self.clients):
                client.offer(encoded)
        if more:
            self._poll()

    def _poll_failed(self, failure) -> None:
        self._polling = False
        log.warn("event stream cannot read new events: {e}", e=failure.getErrorMessage())

    def offer_unsaved(self, event: dict) -> None:
        """A monitoring event the database could not take yet: sent at once, without an id (it
        has none until stored; once stored it comes again with one)."""
        encoded = b"data: %s\n\n" % to_json(event)
        for client in list(self.clients):
            if client.started:
                client.offer([(event, encoded)])

    def _keep_alive(self) -> None:
        for client in list(self.clients):
            client.keepalive()

    def _unsubscribe(self, client: StreamClient) -> None:
        self.clients.discard(client)
        if not self.clients:
            self._stop()

    def _stop(self) -> None:
        if self.offer_unsaved in self._unsaved.listeners:  # in the API process, the snapshot is then read only when asked for
            self._unsaved.listeners.remove(self.offer_unsaved)
        for loop in (self._poller, self._keepalive):
            if loop.running:
                loop.stop()
