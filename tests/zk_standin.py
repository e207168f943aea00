"""A naive stand-in for the gateway's ZK driver, for testing ZK fleets before the driver exists.

One thread holds a session with every device (through ``tools.check_zk.Device``: ZkClient over a
blocking socket) and, every ``period_s``, reads each device's users, templates and attendance
and copies every user some device holds to every device that lacks it, templates included. No
server, no merge rules: enough to make a fleet's devices converge, and to show that the fleet
times, settles and dumps them.
"""

import socket
import threading

from protocol.zk.commands import Command
from protocol.zk.records import Template, User
from tools.check_zk import Device, SocketWire


FIRST_UID = 30_000


class NaiveZkSync:
    def __init__(self, ports: dict[int, int], comm_key: int = 0, period_s: float = 0.2):
        self.ports = ports
        self.comm_key = comm_key
        self.period_s = period_s
        self.cycles = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "NaiveZkSync":
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop, and raise what went wrong in the thread (once)."""
        self._stop.set()
        self._thread.join(10)
        error, self.error = self.error, None
        if error is not None:
            raise error

    def _run(self) -> None:
        devices = {}
        try:
            for terminal_id, port in self.ports.items():
                device = Device(SocketWire(socket.create_connection(("127.0.0.1", port), timeout=5), datagrams=False), self.comm_key, 5.0)
                device.run(device.client.connect)
                devices[terminal_id] = device
            while not self._stop.wait(self.period_s):
                self._cycle(devices)
                self.cycles += 1
        except BaseException as exc:  # the test reads it in stop()
            self.error = exc
        finally:
            for device in devices.values():
                device.wire.sock.close()

    def _cycle(self, devices: dict) -> None:
        held, templates = {}, {}
        for terminal_id, device in devices.items():
            device.ok(Command.DISABLEDEVICE)
            users = device.run(device.client.read_users).users
            prints = device.run(device.client.read_templates).templates
            device.run(device.client.read_attendance)
            device.ok(Command.ENABLEDEVICE)
            held[terminal_id] = {u.user_id: u for u in users}
            by_uid = {u.uid: u.user_id for u in users}
            for t in prints:
                templates.setdefault(by_uid[t.uid], {}).setdefault(t.fid, t.template)
        everyone = {}
        for users in held.values():
            for user_id, user in users.items():
                everyone.setdefault(user_id, user)
        for terminal_id, device in devices.items():
            missing = [u for u in everyone if u not in held[terminal_id]]
            # uids from 30000 up: the keypad takes the lowest free ones, so an enrolment between this
            # cycle's read and write never shares a uid with a user written here (a write upserts by uid)
            next_uid = max([FIRST_UID - 1, *(u.uid for u in held[terminal_id].values())]) + 1
            users, prints = [], []
            for n, user_id in enumerate(missing):
                source = everyone[user_id]
                users.append(User(next_uid + n, user_id, source.name, source.privilege, source.password, source.card, source.group_id))
                prints += [Template(next_uid + n, fid, blob) for fid, blob in sorted(templates.get(user_id, {}).items())]
            if users:
                device.run(lambda now: device.client.save_users(users, prints, now=now))
