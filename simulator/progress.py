"""A fleet run's progress, and how a person watching sees it: a live tqdm bar on a terminal, and
on anything else (a log file, CI) a plain line every ``every_s`` seconds.

Each phase (connecting, running, settling) counts towards its own end: terminals online while
connecting, seconds of load while running; settling has no known end.
"""

import sys
from dataclasses import dataclass

from tqdm import tqdm


@dataclass
class Progress:
    state: str  # connecting | running | settling
    devices: int
    online: int
    elapsed_s: float
    duration_s: float
    produced: int
    unacknowledged: int
    enrolled: int
    deliveries: int


def progress_line(p: Progress) -> str:
    if p.state == "connecting":
        return f"connecting: {p.online}/{p.devices} terminals online"
    return (f"{p.state} {min(p.elapsed_s, p.duration_s):4.0f}/{p.duration_s:.0f} s: {p.online}/{p.devices} online, "
            f"{p.produced:,} events ({p.unacknowledged:,} unacknowledged), {p.enrolled:,} enrolled, "
            f"{p.deliveries:,} deliveries")


class ProgressBar:
    def __init__(self, stream=sys.stderr, every_s: float = 10.0, redraw_s: float = 0.2):
        self._tty = stream.isatty()
        # Off a terminal, tqdm's carriage returns would pile up on one line: a line per update instead.
        self._bar = tqdm(file=stream if self._tty else _Lines(stream), mininterval=redraw_s if self._tty else every_s,
                         bar_format="{percentage:3.0f}% |{bar:20}| {desc}" if self._tty else "{desc}",
                         dynamic_ncols=self._tty, leave=True)
        self._state = None

    def __call__(self, p: Progress) -> None:
        bar = self._bar
        bar.set_description_str(progress_line(p), refresh=False)
        if p.state != self._state:
            self._state = p.state
            bar.reset(total=p.devices if p.state == "connecting" else p.duration_s if p.state == "running" else None)
        done = p.online if p.state == "connecting" else min(p.elapsed_s, p.duration_s)
        bar.update(done - bar.n)

    def close(self) -> None:
        self._bar.close()


class _Lines:
    """A stream for tqdm that turns each redraw into a line of its own."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> None:
        text = text.replace("\r", "").rstrip()
        if text:
            self._stream.write(text + "\n")

    def flush(self) -> None:
        self._stream.flush()
