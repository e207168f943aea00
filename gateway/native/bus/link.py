"""BusLink: one address on an RS-485 bus, as the link its TerminalSession talks through.

The session cannot tell it from a TCP connection. What differs is underneath: a frame the
session sends waits for its turn on the line instead of going straight out, and pausing (the
event log's backpressure) stops the polls that would bring more events.
"""

from protocol import Frame


class BusLink:
    def __init__(self, master, drop):
        self._master = master
        self._drop = drop
        self.address = drop.address
        self.description = f"rs485 {master.name} address {drop.address}"
        self.source = f"rs485 {master.name}"
        # A frame holds the line until it ends: a push is cut to about half a second of line
        # time so other terminals' polls are not held up (one record always goes, however long).
        self.request_bytes = int(master.timing.bytes_per_s * 0.5)

    def send(self, frame: Frame) -> None:
        self._master.queue(self, self._drop, frame)

    def close(self, reason: str) -> None:
        self._master.link_closed(self, self._drop, reason)

    def pause(self) -> None:
        self._drop.paused = True

    def resume(self) -> None:
        self._drop.paused = False
        self._master.wake()

    def unread(self) -> bool:
        return False  # the master reads the line as it comes: an answer not read is not on its way
