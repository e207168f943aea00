"""A gateway mastering a bus exits promptly on SIGTERM or SIGINT whatever kind of port the bus is
on (a device path, ``rfc2217://``, ``socket://``, ``loop://``), also after the port was lost and
reopened: no serial thread outlives the reactor (issue 25, point 5). ``gateway run`` as its own
process; the peers are a pty, pyserial's RFC 2217 port manager and a socket, all on loopback."""

import os
import signal
import socket
import threading
import urllib.request

import pytest
import serial
from serial.rfc2217 import PortManager

from processes import Process

EXIT_WITHIN_S = 15.0  # docs/rs485.md states it: the reactor's shutdown, then nothing left to wait for


class Rfc2217Server:
    """pyserial's RFC 2217 port manager on a loopback socket, in front of a ``loop://`` port."""

    def __init__(self):
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"rfc2217://127.0.0.1:{self._listener.getsockname()[1]}"
        self._connection = None
        self._line = serial.serial_for_url("loop://", timeout=0.05)
        self._alive = True
        threading.Thread(target=self._serve, daemon=True).start()

    def write(self, data: bytes) -> None:  # what the port manager says to the client
        self._connection.sendall(data)

    def _serve(self) -> None:
        self._connection, _ = self._listener.accept()
        manager = PortManager(self._line, self)
        threading.Thread(target=self._line_to_client, args=(manager,), daemon=True).start()
        try:
            while data := self._connection.recv(4096):
                self._line.write(b"".join(manager.filter(data)))
        except OSError:
            pass

    def _line_to_client(self, manager) -> None:
        while self._alive:
            data = self._line.read(4096)
            if data:
                try:
                    self._connection.sendall(b"".join(manager.escape(data)))
                except OSError:
                    return

    def close(self) -> None:
        self._alive = False
        if self._connection is not None:
            try:
                self._connection.shutdown(socket.SHUT_RDWR)
            except OSError:  # the gateway closed its side first, as it should on the way out
                pass
            self._connection.close()
        self._listener.close()


class SocketPeer:
    """A serial-to-Ethernet converter, as far as ``socket://`` can tell: a TCP port that accepts."""

    def __init__(self):
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"socket://127.0.0.1:{self._listener.getsockname()[1]}"
        self._accepted = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        try:
            while True:
                self._accepted.append(self._listener.accept()[0])
        except OSError:
            pass

    def close(self) -> None:
        self._listener.close()
        for connection in self._accepted:
            connection.close()


class Pty:
    def __init__(self):
        self._controller, self._device = os.openpty()
        self.url = os.ttyname(self._device)

    def close(self) -> None:
        os.close(self._controller)
        os.close(self._device)


class Loop:
    url = "loop://"

    def close(self) -> None:
        pass


PEERS = {"device": Pty, "rfc2217": Rfc2217Server, "socket": SocketPeer, "loop": Loop}


def gateway_on(tmp_path, device: str) -> Process:
    """``gateway run`` mastering a bus on ``device``, once its reactor runs (its signal handlers are
    installed then: the page answers only from then on)."""
    config = tmp_path / "gateway.toml"
    config.write_text('tcp_host = "127.0.0.1"\napi_token = "test-token"\n')
    gateway = Process("gateway.cli", "run", "--config", str(config), "--db", f"sqlite:///{tmp_path / 'gateway.db'}",
                      "--tcp-port", "0", "--http-port", "0", "--api-in-process", "--serial", device)
    try:
        page = gateway.wait_for(r"monitoring page at (http://\S+/)").group(1)
        gateway.wait_for(r"bus \S+ open at")
        urllib.request.urlopen(page + "api/sync", timeout=EXIT_WITHIN_S).close()
    except BaseException:
        gateway.stop()
        raise
    return gateway


def stopped_by(gateway: Process, signum: int) -> int:
    gateway.popen.send_signal(signum)
    try:
        return gateway.wait_exit(EXIT_WITHIN_S)
    finally:
        gateway.stop()  # a gateway that hung is killed, not left behind


@pytest.mark.parametrize("kind", PEERS)
def test_sigterm_stops_a_gateway_mastering_a_bus_on_every_kind_of_port(tmp_path, kind):
    peer = PEERS[kind]()
    try:
        gateway = gateway_on(tmp_path, peer.url)
        assert stopped_by(gateway, signal.SIGTERM) == 0
    finally:
        peer.close()


@pytest.mark.parametrize("kind, options", [("rfc2217", ""), ("rfc2217", "?ign_set_control"), ("socket", "")])
def test_sigterm_stops_a_gateway_whose_bus_port_was_lost_on_the_way(tmp_path, kind, options):
    peer = PEERS[kind]()
    try:
        gateway = gateway_on(tmp_path, peer.url + options)
    finally:
        peer.close()  # the converter or the RFC 2217 server goes away: the port is lost, then tried again
    gateway.wait_for(r"port lost")
    assert stopped_by(gateway, signal.SIGTERM) == 0


def test_sigint_stops_a_gateway_mastering_an_rfc2217_bus(tmp_path):
    peer = Rfc2217Server()
    try:
        gateway = gateway_on(tmp_path, peer.url)
        assert stopped_by(gateway, signal.SIGINT) == 0
    finally:
        peer.close()
