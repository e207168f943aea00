"""A frame goes to the kernel at once, and never overtakes bytes Twisted holds: the gateway's
frames to a terminal and the simulated terminal's to the gateway (each side has its own copy:
the simulator imports nothing of the gateway)."""

import socket

import pytest
from twisted.internet import protocol, tcp
from twisted.internet.testing import StringTransport

from gateway.native import tcp as gateway_tcp
from simulator import tcp as simulator_tcp


class WritersSeen:
    """The reactor a connection registers with when it has to wait for room to write."""

    def __init__(self):
        self.writers = []
        self.later = []  # what the next turn would run

    def addWriter(self, writer):
        self.writers.append(writer)

    def removeWriter(self, writer):
        if writer in self.writers:
            self.writers.remove(writer)

    def callLater(self, delay, f, *args):
        self.later.append((f, args))

    def addReader(self, reader):
        pass

    def removeReader(self, reader):
        pass


@pytest.fixture(params=[gateway_tcp, simulator_tcp], ids=["gateway", "simulator"])
def send_now(request):
    return request.param.send_now


@pytest.fixture
def pair():
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    peer.setblocking(False)
    reactor = WritersSeen()
    conn = tcp.Connection(ours, protocol.Protocol(), reactor)
    conn.connected = 1
    yield conn, peer, reactor
    ours.close()
    peer.close()


def received(peer) -> bytes:
    chunks = []
    while True:
        try:
            chunk = peer.recv(1 << 20)
        except BlockingIOError:
            return b"".join(chunks)
        chunks.append(chunk)


def test_a_frame_reaches_the_peer_without_a_turn_of_the_reactor(pair, send_now):
    conn, peer, reactor = pair
    send_now(conn, b"PUT_USERS")
    assert received(peer) == b"PUT_USERS"
    assert reactor.writers == []  # no registration for writing, nothing left for a later turn


def test_what_the_kernel_does_not_take_waits_and_later_frames_queue_behind_it(pair, send_now):
    conn, peer, reactor = pair
    big = bytes(range(256)) * 40_000  # more than a socket pair's buffers hold
    send_now(conn, big)
    assert reactor.writers == [conn]  # the rest waits for room
    send_now(conn, b"ACK")  # must not overtake the rest of ``big``
    got = received(peer)
    while conn in reactor.writers:
        conn.doWrite()
        got += received(peer)
    assert got == big + b"ACK"


def test_nothing_reaches_the_peer_once_the_connection_is_aborted(pair, send_now):
    conn, peer, reactor = pair
    conn.abortConnection()  # connected, and not disconnecting, until the next turn
    assert reactor.later, "the connection is lost on the next turn"
    send_now(conn, b"PUT_USERS")
    assert received(peer) == b""


def test_another_transport_is_written_as_before(send_now):
    transport = StringTransport()
    send_now(transport, b"EVENTS ack")
    assert transport.value() == b"EVENTS ack"


def test_the_bytes_a_peer_sent_that_wait_unread_are_counted_from_the_kernel(pair):
    conn, peer, _ = pair
    assert gateway_tcp.unread_bytes(conn) == 0
    peer.sendall(b"PUT_USERS answer")
    assert gateway_tcp.unread_bytes(conn) == len(b"PUT_USERS answer")
    conn.socket.recv(1 << 16)
    assert gateway_tcp.unread_bytes(conn) == 0
    assert gateway_tcp.unread_bytes(StringTransport()) == 0  # no socket: nothing can be told


def test_under_tls_the_records_not_yet_decrypted_are_what_waits_unread(pair):
    conn, peer, _ = pair

    class TlsOver:  # what Twisted's TLS gives a protocol as its transport: the connection is under it
        transport = conn

    peer.sendall(b"a TLS record")
    assert gateway_tcp.unread_bytes(TlsOver()) == len(b"a TLS record")
    del conn.socket  # what connectionLost leaves
    assert gateway_tcp.unread_bytes(conn) == 0
