"""Before a link exists: what can keep a terminal's connection from reaching the gateway (the
listen backlog, the open-file limit) and how the gateway tells when the kernel or Twisted
dropped one, which neither says by itself.

- Twisted listens with a backlog of 50. When the accept queue is full, Linux drops the
  client's last handshake ACK without a word (``tcp_abort_on_overflow`` is 0): the terminal
  believes it is connected, the gateway never hears of it, and the terminal waits for its
  30 s handshake time-out before it dials again. A site's thousand terminals dialling at once
  fill 50 places whenever the reactor is busy for a moment, so the gateway listens with
  ``LISTEN_BACKLOG`` (the kernel caps it at ``net.core.somaxconn``).
- Each link holds a file descriptor. ``raise_fd_limit`` lifts the soft limit to the hard one
  at start. Past the limit Twisted accepts and closes connections at once (EMFILE), saying so
  only at a level operators never see.
- ``AcceptWatch`` makes both visible: once a second it reads each listening socket's accept
  queue and the kernel's ``ListenOverflows`` count, and it hears Twisted's accept errors; each
  is a metric and a warning (said once, then summarised, by ``RepeatedLines``).
"""

import resource
import socket
import struct

from twisted.internet import task
from twisted.logger import Logger, globalLogPublisher

log = Logger(namespace="gateway.accept")

LISTEN_BACKLOG = 4096  # what the kernel allows by default since Linux 5.4 (net.core.somaxconn)
FDS_NOT_FOR_LINKS = 100  # the database, the log, the HTTP port and its clients, the listeners
_NETSTAT = "/proc/net/netstat"
_TCP_INFO = struct.Struct("=8B6I")  # tcp_info up to tcpi_sacked; on a listener unacked/sacked are queue/backlog


def raise_fd_limit() -> int:
    """Lift the soft open-file limit to the hard limit, say how many links fit, return the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            log.info("open-file limit raised from {soft} to {limit}", soft=soft, limit=wanted)
            soft = wanted
        except (ValueError, OSError) as exc:
            log.warn("open-file limit stays at {soft}: cannot raise it to {limit} ({e})", soft=soft, limit=wanted, e=exc)
    log.info("room for about {n} terminal links (open-file limit {limit}; raise the hard limit, LimitNOFILE= "
             "in systemd, for more)", n=max(0, soft - FDS_NOT_FOR_LINKS), limit=soft)
    return soft


def accept_queue(sock: socket.socket) -> tuple[int, int] | None:
    """(connections waiting to be accepted, the most that may wait) of a listening socket, or
    None where the system does not say (not Linux)."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO.size)
    except (AttributeError, OSError):
        return None
    fields = _TCP_INFO.unpack_from(info)
    return fields[12], fields[13]


def listen_overflows(netstat: str = _NETSTAT) -> int | None:
    """Connections the kernel dropped at a full accept queue, on this host since boot (the
    count is the network namespace's, not this process's); None where it is not known."""
    try:
        with open(netstat) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for names, values in zip(lines[::2], lines[1::2]):
        if names.startswith("TcpExt:"):
            fields = dict(zip(names.split()[1:], values.split()[1:]))
            return int(fields["ListenOverflows"]) if "ListenOverflows" in fields else None
    return None


class AcceptWatch:
    """Counts and says what was lost between a terminal's connect and the gateway's accept."""

    period_s = 1.0

    def __init__(self, clock, metrics, lines, overflows=listen_overflows, publisher=globalLogPublisher):
        self._metrics = metrics
        self._lines = lines  # RepeatedLines: a storm of these must not fill the disk
        self._overflows = overflows
        self._publisher = publisher
        self._ports = []
        self._last_overflows = None
        self._loop = task.LoopingCall(self.check)
        self._loop.clock = clock

    def start(self, ports) -> None:
        """Watch these listening ports (Twisted ``IListeningPort``s with a ``socket``)."""
        self._ports = list(ports)
        self._last_overflows = self._overflows()
        self._publisher.addObserver(self._accept_error)
        self._loop.start(self.period_s, now=False)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()
        self._publisher.removeObserver(self._accept_error)  # a no-op when it was not added

    def check(self) -> None:
        for port in self._ports:
            queue = accept_queue(port.socket) if getattr(port, "socket", None) is not None else None
            if queue is None:
                continue
            waiting, most = queue
            where = f"port {port.getHost().port}"
            self._metrics.accept_queue.labels(where).set(waiting)
            if waiting >= most:
                self._lines.warn("full accept queues", where, "accept queue of {where} full ({n} connections waiting): the kernel "
                                 "drops further connections silently; the reactor is too busy to accept", where=where, n=waiting)
        now = self._overflows()
        if now is not None and self._last_overflows is not None and now > self._last_overflows:
            dropped = now - self._last_overflows
            self._metrics.listen_overflows.inc(dropped)
            self._lines.warn("connections dropped by the kernel", "this host",
                             "the kernel dropped {n} connections at a full accept queue on this host in the last {s:g} s "
                             "(ListenOverflows; those terminals time out and dial again)", n=dropped, s=self.period_s)
        self._last_overflows = now

    def _accept_error(self, event) -> None:
        """Twisted's tcp.Port says these at info, under a namespace the operators' log filters out."""
        text = event.get("log_format") or ""
        if not event.get("log_namespace", "").endswith(".Port"):
            return
        if text.startswith("EMFILE recovery: Closed socket"):
            reason, line = "out_of_file_descriptors", "closed a connection at once: no file descriptor left (raise the open-file limit)"
        elif text.startswith("Could not accept new connection"):
            reason, line = "accept_failed", f"could not accept a connection ({event.get('acceptError')})"
        else:
            return
        self._metrics.links_refused.labels(reason).inc()
        self._lines.warn("connections not accepted", "the listener", "{line}", line=line)
