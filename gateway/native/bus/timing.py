"""LineTiming: how long bytes take on an RS-485 line, and the waits a bus master derives from it.

A master that waits too little talks over a terminal still answering; one that waits too much
wastes the line. Every wait here follows from the baud rate and the frame lengths, plus two
allowances a person can reason about: how long a terminal may think before it answers, and how
late the operating system and a USB adapter hand over received bytes.
"""

from dataclasses import dataclass

from protocol.frame import MAX_FRAME, OVERHEAD
from protocol.messages import Command, build_body

BITS_PER_CHAR = 10  # 8N1: a start bit, eight data bits, a stop bit
# A POLL and an answer with no events: the least a poll costs.
POLL_BYTES = 2 * OVERHEAD + len(build_body(Command.POLL, False, dict(ack_through=0, max_events=0))) + len(
    build_body(Command.POLL, True, dict(events=[]))
)


@dataclass(frozen=True)
class LineTiming:
    baud: int
    answer_within_s: float = 0.1  # a terminal's think time before the first byte of its answer
    # FTDI adapters hold received bytes for up to their 16 ms latency timer; ptys and a busy
    # reactor add a few ms more.
    latency_s: float = 0.05

    @property
    def bytes_per_s(self) -> float:
        return self.baud / BITS_PER_CHAR

    def tx_s(self, nbytes: float) -> float:
        """Time ``nbytes`` take on the line."""
        return nbytes / self.bytes_per_s

    @property
    def turnaround_s(self) -> float:
        """Quiet time after an answer before the master sends again: 3.5 characters, the gap
        Modbus RTU uses, so the terminal's driver has let go of the line."""
        return self.tx_s(3.5)

    def answer_deadline_s(self, request_bytes: int) -> float:
        """From writing a request to the first byte of its answer; the request itself takes its
        time on the line first."""
        return self.tx_s(request_bytes) + self.answer_within_s + self.latency_s

    @property
    def silence_s(self) -> float:
        """The longest pause inside an answer before it counts as broken off."""
        return max(self.tx_s(32), self.latency_s)

    def longest_exchange_s(self) -> float:
        """A largest-possible request and a largest-possible answer, back to back."""
        return self.answer_deadline_s(MAX_FRAME) + self.tx_s(MAX_FRAME)

    def poll_s(self) -> float:
        """Line time of a poll that finds nothing: both frames and the quiet after each."""
        return self.tx_s(POLL_BYTES) + 2 * self.turnaround_s
