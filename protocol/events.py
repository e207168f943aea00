"""Terminal log events: what happened at a door or to a user, and who caused it.

Codes follow the field's established numbering (0x2000 enroll success ... 0x2600 delete-all);
for user events the sub-code says whether the change came from the server (0x01) or was made
on the device (0x02). See docs/protocol.md section "Event log entries".
"""

from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from construct import Int8ub, Int16ub, Int64ub, Struct

from protocol.compiling import CompilableAdapter
from protocol.errors import MessageError
from protocol.records import UserId


class EventCode(IntEnum):
    VERIFY_SUCCESS = 0x1000
    VERIFY_FAIL = 0x1100
    IDENTIFY_SUCCESS = 0x1200
    IDENTIFY_FAIL = 0x1300
    DOOR_OPENED = 0x5000
    DOOR_FORCED_OPEN = 0x5100
    ENROLL_SUCCESS = 0x2000
    ENROLL_FAIL = 0x2100
    UPDATE_SUCCESS = 0x2200
    UPDATE_FAIL = 0x2300
    DELETE_SUCCESS = 0x2400
    DELETE_FAIL = 0x2500
    DELETE_ALL_SUCCESS = 0x2600


class Origin(IntEnum):
    """Sub-code of user events: who made the change the event reports."""

    SERVER = 0x01
    DEVICE = 0x02


class Credential(IntEnum):
    """Sub-code of verification events: what the person presented."""

    CARD = 0x01
    FINGER = 0x02
    FACE = 0x03
    PIN = 0x04


MAX_EVENT_ID = 2**63 - 1  # event ids and timestamps (ms) fit a signed 64-bit column

USER_CHANGE_CODES = frozenset({EventCode.ENROLL_SUCCESS, EventCode.UPDATE_SUCCESS})


_CODE_NAMES = {int(code): code.name for code in EventCode}  # a dict, not an enum call: the event log names every event it stores


@dataclass(frozen=True, slots=True)
class Event:
    event_id: int  # per terminal, strictly increasing
    timestamp_ms: int
    code: int
    sub_code: int = 0
    user_id: str = ""

    @property
    def is_device_user_change(self) -> bool:
        """An enrolment or edit made at the terminal: the gateway must pull that user."""
        return self.code in USER_CHANGE_CODES and self.sub_code == Origin.DEVICE and bool(self.user_id)

    @property
    def code_name(self) -> str:
        return _CODE_NAMES.get(self.code) or f"0x{self.code:04X}"


EventStruct = Struct(
    "event_id" / Int64ub,
    "timestamp_ms" / Int64ub,
    "code" / Int16ub,
    "sub_code" / Int8ub,
    "user_id" / UserId,
)


class _EventAdapter(CompilableAdapter):
    # Item access, not attribute access: Container.__getattr__ costs ten times as much.
    def _decode(self, obj: Any, context: Any, path: str) -> Event:
        if obj["event_id"] > MAX_EVENT_ID or obj["timestamp_ms"] > MAX_EVENT_ID:
            # Databases store signed 64-bit integers: one such event would fail every commit it joins.
            raise MessageError(f"event id and timestamp must be below 2**63, got {obj['event_id']} and {obj['timestamp_ms']}")
        return Event(obj["event_id"], obj["timestamp_ms"], obj["code"], obj["sub_code"], obj["user_id"])

    def _encode(self, ev: Event, context: Any, path: str) -> dict[str, Any]:
        return dict(
            event_id=ev.event_id, timestamp_ms=ev.timestamp_ms, code=ev.code, sub_code=ev.sub_code, user_id=ev.user_id
        )


EventWire = _EventAdapter(EventStruct).compile()
