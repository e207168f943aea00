"""Before a link exists: the accept queue read from a real listening socket, the kernel's
overflow count, Twisted's accept errors, and the open-file limit, each counted and said."""

import resource
import socket

import pytest
from twisted.internet import task
from twisted.logger import LogPublisher

from gateway.native.accept import AcceptWatch, accept_queue, listen_overflows, raise_fd_limit
from gateway.metrics import Metrics
from gateway.quietlog import RepeatedLines
from test_doorman import Said

NETSTAT = """TcpExt: SyncookiesSent ListenOverflows ListenDrops
TcpExt: 0 {n} {n}
IpExt: InNoRoutes
IpExt: 0
"""


class Listening:
    """A listening port as AcceptWatch sees one: its socket and its address."""

    def __init__(self, backlog: int):
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(backlog)
        self.waiting = []

    def getHost(self):
        return type("Host", (), dict(port=self.socket.getsockname()[1]))()

    def dial(self, n: int) -> None:
        """Connections the kernel completes and queues; nobody accepts them."""
        self.waiting += [socket.create_connection(self.socket.getsockname(), timeout=5) for _ in range(n)]

    def close(self) -> None:
        for s in self.waiting + [self.socket]:
            s.close()


@pytest.fixture
def port():
    listening = Listening(backlog=3)
    yield listening
    listening.close()


def watch(overflows=lambda: 100):
    clock, said, publisher = task.Clock(), Said(), LogPublisher()
    watcher = AcceptWatch(clock, Metrics(), RepeatedLines(said, clock), overflows=overflows, publisher=publisher)
    return watcher, clock, said, publisher


def test_the_accept_queue_of_a_listening_socket_is_read_from_the_kernel(port):
    port.dial(2)
    assert accept_queue(port.socket) == (2, 3)


def test_the_kernels_overflow_count_is_read_from_netstat(tmp_path):
    netstat = tmp_path / "netstat"
    netstat.write_text(NETSTAT.format(n=731))
    assert listen_overflows(str(netstat)) == 731
    assert listen_overflows(str(tmp_path / "absent")) is None


def test_a_full_accept_queue_is_a_gauge_and_a_warning(port):
    watcher, clock, said, _ = watch()
    watcher.start([port])
    port.dial(3)
    clock.advance(watcher.period_s)
    where = f"port {port.getHost().port}"
    assert watcher._metrics.value(watcher._metrics.accept_queue, port=where) == 3
    assert said.lines == [f"accept queue of {where} full (3 connections waiting): the kernel drops further connections "
                          "silently; the reactor is too busy to accept"]
    watcher.stop()


def test_a_queue_with_room_is_only_a_gauge(port):
    watcher, clock, said, _ = watch()
    watcher.start([port])
    port.dial(1)
    clock.advance(watcher.period_s)
    assert watcher._metrics.value(watcher._metrics.accept_queue, port=f"port {port.getHost().port}") == 1
    assert said.lines == []
    watcher.stop()


def test_connections_the_kernel_dropped_are_counted_and_said():
    counts = iter([100, 100, 131])
    watcher, clock, said, _ = watch(overflows=lambda: next(counts))
    watcher.start([])
    clock.advance(watcher.period_s)
    assert said.lines == []
    clock.advance(watcher.period_s)
    assert watcher._metrics.value(watcher._metrics.listen_overflows) == 31
    assert said.lines == ["the kernel dropped 31 connections at a full accept queue on this host in the last 1 s "
                          "(ListenOverflows; those terminals time out and dial again)"]
    watcher.stop()


def test_twisteds_quiet_accept_errors_become_refusals_said_aloud():
    watcher, clock, said, publisher = watch()
    watcher.start([])
    emfile = dict(log_namespace="twisted.internet.tcp.Port", log_format="EMFILE recovery: Closed socket from {address}")
    publisher(emfile)
    publisher(dict(log_namespace="twisted.internet.tcp.Port", log_format="Could not accept new connection ({acceptError})",
                   acceptError="ENOBUFS"))
    publisher(dict(log_namespace="gateway", log_format="EMFILE recovery: Closed socket from {address}"))  # not Twisted's
    metrics = watcher._metrics
    assert metrics.value(metrics.links_refused, reason="out_of_file_descriptors") == 1
    assert metrics.value(metrics.links_refused, reason="accept_failed") == 1
    assert said.lines == ["closed a connection at once: no file descriptor left (raise the open-file limit)"]
    watcher.stop()
    publisher(emfile)
    assert metrics.value(metrics.links_refused, reason="out_of_file_descriptors") == 1  # no longer listening


def test_the_soft_open_file_limit_is_raised_to_the_hard_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lower = min(soft, 256)
    if lower == hard:
        pytest.skip("the hard open-file limit is too low to lower the soft one below it")
    resource.setrlimit(resource.RLIMIT_NOFILE, (lower, hard))
    try:
        assert raise_fd_limit() == (hard if hard != resource.RLIM_INFINITY else max(lower, 1 << 20))
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] != lower
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
