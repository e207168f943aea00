"""DeviceSession: one client's conversation with an emulated ZK device, no I/O.

Packets in, packets out through ``write``. It answers every command pyzk and protocol.zk's
client use, ACK_UNKNOWN to the rest, and ACK_UNAUTH to everything but CONNECT, AUTH and EXIT
until a device with a comm key has seen the right proof. Real-time events go out one at a time:
the next only after the client's ACK_OK for the last, so a client reading one packet per event
(pyzk does) never finds two in one read.
"""

from collections import deque
from collections.abc import Callable

from protocol.zk import bodies
from protocol.zk.commands import Command, EventFlag, ReplyCode, Table
from protocol.zk.commkey import commkey_matches
from protocol.zk.errors import BodyError
from protocol.zk.packet import MAX_DATA, Packet
from protocol.zk.realtime import event_packet
from protocol.zk.records import build_attendance_table, build_template_table, decode_time, decode_user, encode_time
from simulator.zk.device import ZkDevice

MAX_UPLOAD = 16 * 1024 * 1024  # what one upload may announce before the device refuses it

# Commands a device acknowledges without doing anything the emulator models.
_ACKNOWLEDGED = {
    Command.REFRESHDATA,
    Command.REFRESHOPTION,
    Command.CANCELCAPTURE,
    Command.STARTVERIFY,
    Command.ENABLE_CLOCK,
}


# On UDP a device sends a transfer in DATA datagrams of at most this much (pyzk reads each with
# recv(1032)), and answers a table inline only when it fits one 1024-byte read with its header.
DATAGRAM_PIECE = 1024
DATAGRAM_INLINE_LIMIT = 1024 - 8


class DeviceSession:
    def __init__(self, device: ZkDevice, session_id: int, write: Callable[[Packet], None], *, datagrams: bool = False):
        self.device = device
        self.datagrams = datagrams  # on UDP: transfers in pieces, small inline answers
        self.session_id = session_id
        self.write = write
        self.authenticated = device.comm_key == 0
        self.closed = False  # EXIT answered: the transport closes the connection
        self.event_mask = 0
        self._table: bytes | None = None  # prepared by PREPARE_BUFFER, read by READ_BUFFER
        self._upload: bytearray | None = None
        self._upload_size = 0
        self._events: deque[Packet] = deque()
        self._event_in_flight: Packet | None = None  # sent, and not acknowledged yet

    def receive(self, packet: Packet) -> None:
        command = packet.command
        self.device.received(packet)
        if command == ReplyCode.ACK_OK:  # the client acknowledges an event: never answered
            self._event_acknowledged()
            return
        if command == Command.CONNECT:
            self._answer(packet, ReplyCode.ACK_OK if self.authenticated else ReplyCode.ACK_UNAUTH)
        elif command == Command.AUTH:
            self.authenticated = self.authenticated or commkey_matches(self.device.comm_key, self.session_id, packet.data)
            self._answer(packet, ReplyCode.ACK_OK if self.authenticated else ReplyCode.ACK_UNAUTH)
        elif command == Command.EXIT:
            self._answer(packet, ReplyCode.ACK_OK)
            self.close()
        elif not self.authenticated:
            self._answer(packet, ReplyCode.ACK_UNAUTH)
        elif command in self.device.faults.unknown_commands:
            self._answer(packet, ReplyCode.ACK_UNKNOWN)
        else:
            handler = self._HANDLERS.get(command)
            if handler is None:
                self._answer(packet, ReplyCode.ACK_OK if command in _ACKNOWLEDGED else ReplyCode.ACK_UNKNOWN)
                return
            try:
                handler(self, packet)
            except BodyError:
                self._answer(packet, ReplyCode.ACK_ERROR)

    def close(self) -> None:
        self.closed = True
        self.device.unsubscribe(self._push_event)
        self.release_keypad()  # a device enables itself when its client goes

    def release_keypad(self) -> None:
        """Let go of the device as ENABLEDEVICE does: the keypad actions that waited are done."""
        self.device.release(self)

    @property
    def holds_keypad(self) -> bool:
        return self.device.held_by(self)

    def _answer(self, to: Packet, code: int, data: bytes = b"") -> None:
        self.write(Packet(code, self.session_id, to.reply_id, data))

    def _ok(self, to: Packet, done: bool) -> None:
        self._answer(to, ReplyCode.ACK_OK if done else ReplyCode.ACK_ERROR)

    # -- facts ----------------------------------------------------------------------------------

    def _version(self, packet):
        self._answer(packet, ReplyCode.ACK_OK, self.device.firmware.version.encode() + b"\0")

    def _read_option(self, packet):
        name = bodies.parse_option_request(packet.data)
        if name not in self.device.options:
            self._answer(packet, ReplyCode.ACK_ERROR)
        else:
            self._answer(packet, ReplyCode.ACK_OK, bodies.option_assignment(name, self.device.options[name]))

    def _write_option(self, packet):
        name, value = bodies.parse_option_assignment(packet.data)
        self.device.options[name] = value
        self._answer(packet, ReplyCode.ACK_OK)

    def _sizes(self, packet):
        self._answer(packet, ReplyCode.ACK_OK, bodies.encode_sizes(self.device.sizes()))

    def _get_time(self, packet):
        self._answer(packet, ReplyCode.ACK_OK, bodies.u32(encode_time(self.device.now())))

    def _set_time(self, packet):
        self.device.set_time(decode_time(bodies.parse_u32(packet.data)))
        self._answer(packet, ReplyCode.ACK_OK)

    def _disable(self, packet):
        if not self.device.faults.keypad_never_held:
            self.device.hold(self)
        self._answer(packet, ReplyCode.ACK_OK)

    def _enable(self, packet):
        self._answer(packet, ReplyCode.ACK_OK)  # first: the keypad's real-time events come after it
        self.release_keypad()

    def _register(self, packet):
        self.event_mask = bodies.parse_u32(packet.data)
        if self.event_mask:
            self.device.unsubscribe(self._push_event)
            self.device.subscribe(self._push_event)
        else:
            self.device.unsubscribe(self._push_event)
        self._answer(packet, ReplyCode.ACK_OK)

    # -- users and templates, one at a time ------------------------------------------------------

    def _write_user(self, packet):
        if len(packet.data) not in (72, 28):
            raise BodyError(f"USER_WRQ of {len(packet.data)} bytes")
        self._ok(packet, self.device.put_user(decode_user(packet.data)))

    def _delete_user(self, packet):
        self._ok(packet, self.device.delete_uid(bodies.parse_uid(packet.data)))

    def _delete_template(self, packet):
        self._ok(packet, self.device.delete_template(*bodies.parse_uid_finger(packet.data)))

    def _delete_template_by_user_id(self, packet):
        user_id, fid = bodies.parse_user_id_finger(packet.data)
        user = self.device.user(user_id)
        self._ok(packet, user is not None and self.device.delete_template(user.uid, fid))

    def _read_template(self, packet):
        template = self.device.templates.get(bodies.parse_uid_finger(packet.data))
        if template is None:
            self._answer(packet, ReplyCode.ACK_ERROR)
        else:
            # One byte after the template: pyzk drops the last byte of this answer.
            self._answer(packet, Command.DATA, template.template + b"\0")

    # -- buffered reads ----------------------------------------------------------------------------

    def _prepare_buffer(self, packet):
        table = self._table_for(bodies.parse_buffer_request(packet.data))
        if table is None:
            self._answer(packet, ReplyCode.ACK_ERROR)
        elif len(table) <= min(self.device.firmware.inline_limit, DATAGRAM_INLINE_LIMIT if self.datagrams else MAX_DATA) \
                and not self.device.firmware.announced_table_bytes:
            self._answer(packet, Command.DATA, table)
        else:
            self._table = table
            self._answer(packet, ReplyCode.ACK_OK, bodies.buffer_info(self.device.firmware.announced_table_bytes or len(table)))

    def _table_for(self, read: bodies.TableRead) -> bytes | None:
        device, fw = self.device, self.device.firmware
        if (read.command, read.fct) == (Command.USERTEMP_RRQ, Table.USER):
            return device.user_table()
        if (read.command, read.fct) == (Command.DB_RRQ, Table.FINGERTMP):
            return build_template_table([device.templates[k] for k in sorted(device.templates)])
        if read.command == Command.ATTLOG_RRQ:
            return build_attendance_table(device.attendance, fw.attendance_record_size)
        return None

    def _read_buffer(self, packet):
        start, size = bodies.parse_chunk_request(packet.data)
        announced = self.device.firmware.announced_table_bytes or len(self._table or b"")
        if self._table is None or start + size > announced or not 0 < size <= MAX_DATA:
            self._answer(packet, ReplyCode.ACK_ERROR)
            return
        chunk = self._table[start : start + size].ljust(size, b"\0")  # a hostile firmware's zeros past the table
        if self.device.firmware.chunks_through_prepare_data or self.datagrams:
            self._answer(packet, Command.PREPARE_DATA, bodies.prepare_data(size, device=True))
            piece = DATAGRAM_PIECE if self.datagrams else size
            for start in range(0, size, piece):
                self._answer(packet, Command.DATA, chunk[start : start + piece])
            self._answer(packet, ReplyCode.ACK_OK)
        else:
            self._answer(packet, Command.DATA, chunk)

    def _free(self, packet):
        self._table = self._upload = None
        self._answer(packet, ReplyCode.ACK_OK)

    # -- uploads -------------------------------------------------------------------------------------

    def _prepare_upload(self, packet):
        size = bodies.parse_prepare_data(packet.data)
        if size > MAX_UPLOAD:
            self._answer(packet, ReplyCode.ACK_ERROR)
            return
        self._upload, self._upload_size = bytearray(), size
        self._answer(packet, ReplyCode.ACK_OK)

    def _upload_data(self, packet):
        if self._upload is None or len(self._upload) + len(packet.data) > self._upload_size:
            self._answer(packet, ReplyCode.ACK_ERROR)
            return
        self._upload += packet.data
        self._answer(packet, ReplyCode.ACK_OK)

    def _save_upload(self, packet):
        if self._upload is None or len(self._upload) != self._upload_size:
            self._answer(packet, ReplyCode.ACK_ERROR)
            return
        users, templates = bodies.parse_upload(bytes(self._upload))
        self._upload = None
        stored = all([self.device.put_user(u) for u in users] + [self.device.put_template(t) for t in templates])
        self._ok(packet, stored)

    # -- real-time events ------------------------------------------------------------------------------

    def _push_event(self, code: EventFlag, data: bytes) -> None:
        if self.closed or not self.event_mask & code:
            return
        self._events.append(event_packet(code, data))
        if self._event_in_flight is None:
            self._send_next_event()

    def _event_acknowledged(self) -> None:
        acknowledged, self._event_in_flight = self._event_in_flight, None
        if acknowledged is not None:
            self.device.event_acknowledged(EventFlag(acknowledged.session_id))
        self._send_next_event()

    def _send_next_event(self) -> None:
        if self._events:
            self._event_in_flight = self._events.popleft()
            self.write(self._event_in_flight)

    _HANDLERS = {
        Command.GET_VERSION: _version,
        Command.OPTIONS_RRQ: _read_option,
        Command.OPTIONS_WRQ: _write_option,
        Command.GET_FREE_SIZES: _sizes,
        Command.GET_TIME: _get_time,
        Command.SET_TIME: _set_time,
        Command.DISABLEDEVICE: _disable,
        Command.ENABLEDEVICE: _enable,
        Command.REG_EVENT: _register,
        Command.USER_WRQ: _write_user,
        Command.DELETE_USER: _delete_user,
        Command.DELETE_USERTEMP: _delete_template,
        Command.DEL_FPTMP: _delete_template_by_user_id,
        Command.GET_USERTEMP: _read_template,
        Command.PREPARE_BUFFER: _prepare_buffer,
        Command.READ_BUFFER: _read_buffer,
        Command.FREE_DATA: _free,
        Command.PREPARE_DATA: _prepare_upload,
        Command.DATA: _upload_data,
        Command.SAVE_USERTEMPS: _save_upload,
    }
