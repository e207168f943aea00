"""Error types of the ZK protocol, each saying whose fault it is (docs/zk.md)."""

from protocol.errors import FrameError, LocalProtocolError, MessageError

__all__ = ["BodyError", "LocalProtocolError", "PacketError"]


class PacketError(FrameError):
    """Bytes from the peer that do not form a valid ZK packet; the decoder skips them and resyncs."""


class BodyError(MessageError):
    """A packet that is intact but whose data is not a valid body for its command, or a value
    that does not fit the field it is written to."""
