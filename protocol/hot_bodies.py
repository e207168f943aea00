"""The bodies of a delivery, read and written with the struct module.

At one enrolment a second each delivery is a round trip of its own: the terminal answers the
PUT_USERS with its results, its UPDATE_SUCCESS event comes in an EVENTS request of one event,
acknowledged by an EVENTS answer holding one integer. construct's compiled code, with its stream
and containers around it, took about a tenth of the reactor thread's time per delivery at that
rate to read the request and build the answer (docs/loadtest.md, "A lone delivery"); the struct
module does each in a few percent of it.

The declarations in protocol/messages.py and protocol/events.py stay the messages' definition.
These take only what construct takes the same way; anything else (a short payload, bytes left
over, an id too large, a user id that is not UTF-8) they decline, construct then reads it, and
its error says what is wrong. A property test holds the two to the same results.
"""

import struct

from construct import Container, ListContainer

from protocol.events import MAX_EVENT_ID, Event

_COUNT = struct.Struct(">H")  # EventBatch's PrefixedArray(Int16ub, ...)
# EventStruct's fields up to the user id, and the user id's length (its PascalString(Int8ub, "utf8")).
_EVENT_HEAD = struct.Struct(">QQHBB")
_ACK_THROUGH = struct.Struct(">Q")  # the EVENTS answer: ack_through / Int64ub
_BYTE = struct.Struct(">B")  # a UserResults result's status (its count and user id length: payload[i])


def read_event_batch(payload: bytes) -> Container | None:
    """An EventBatch body (an EVENTS request, a POLL answer) as construct reads it, or None when
    construct must read it: it is not a well-formed one."""
    try:
        (count,) = _COUNT.unpack_from(payload, 0)
        offset = _COUNT.size
        events = ListContainer()
        for _ in range(count):
            event_id, timestamp_ms, code, sub_code, length = _EVENT_HEAD.unpack_from(payload, offset)
            offset += _EVENT_HEAD.size
            user_id = payload[offset:offset + length]
            offset += length
            if len(user_id) != length or event_id > MAX_EVENT_ID or timestamp_ms > MAX_EVENT_ID:
                return None
            events.append(Event(event_id, timestamp_ms, code, sub_code, user_id.decode("utf8")))
    except (struct.error, UnicodeDecodeError):
        return None
    if offset != len(payload):
        return None
    return Container(events=events)


def read_user_results(payload: bytes) -> Container | None:
    """A PUT_USERS or DELETE_USERS answer (UserResults) as construct reads it, or None when
    construct must read it."""
    try:
        count = payload[0]
        offset = 1
        results = ListContainer()
        for _ in range(count):
            length = payload[offset]
            user_id = payload[offset + 1:offset + 1 + length]
            offset += 1 + length
            (status,) = _BYTE.unpack_from(payload, offset)
            offset += 1
            if len(user_id) != length:
                return None
            results.append(Container(user_id=user_id.decode("utf8"), status=status))
    except (IndexError, struct.error, UnicodeDecodeError):
        return None
    if offset != len(payload):
        return None
    return Container(results=results)


def build_event_ack(body: dict[str, object]) -> bytes | None:
    """The EVENTS answer's payload, or None when construct must build it (to say why it cannot)."""
    try:
        return _ACK_THROUGH.pack(body["ack_through"])
    except (KeyError, TypeError, struct.error):
        return None
