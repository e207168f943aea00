"""Error types of the wire protocol: what went wrong, where, and the code sent back to a peer."""

from enum import IntEnum


class ProtocolError(Exception):
    """Base of everything the protocol package raises or reports."""


class FrameError(ProtocolError):
    """Bytes on the link that do not form a valid frame; the decoder skips them and resyncs.

    ``offset`` is the position in the stream (bytes fed since the decoder was created) where the
    bad bytes start, so a person can find them in a capture. ``continues`` is true for bytes
    skipped right after a rejected frame: the rest of that frame, one corruption counted once.
    """

    def __init__(self, offset: int, reason: str, skipped: int = 0, continues: bool = False):
        super().__init__(f"at byte {offset}: {reason}")
        self.offset = offset
        self.reason = reason
        self.skipped = skipped
        self.continues = continues


class MessageError(ProtocolError):
    """A frame that is intact but whose payload is not a valid message for its command."""


class LocalProtocolError(ProtocolError):
    """This side broke the protocol's rules: a request before the handshake, a WELCOME before
    the terminal proved itself, anything after close. A bug of the caller, never of the peer."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol's rules in a way that ends the link: corrupt data before it
    authenticated, too many corrupt frames, a handshake it failed or never finished, silence."""


class ErrorCode(IntEnum):
    """Codes carried in an error reply (a frame with the ERROR flag)."""

    BAD_MESSAGE = 1
    UNKNOWN_COMMAND = 2
    NOT_AUTHENTICATED = 3
    AUTH_FAILED = 4
    UNKNOWN_TERMINAL = 5
    BUSY = 6
    INTERNAL = 7
    UNSUPPORTED_VERSION = 8
    REPLACED = 9
    PENDING_ADMISSION = 10


class RemoteError(ProtocolError):
    """The peer answered a request with an error reply."""

    def __init__(self, code: int, text: str):
        try:
            name = ErrorCode(code).name
        except ValueError:
            name = f"code {code}"
        super().__init__(f"{name}: {text}")
        self.code = code
        self.text = text
