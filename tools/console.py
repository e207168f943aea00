"""What the command-line tools share: opening their input, and ending with an exit code, not a traceback."""

import os
import sys
from collections.abc import Callable
from typing import BinaryIO

USAGE_ERROR = 2


class UsageError(Exception):
    """The command line asks for something impossible; the tool says so in one line and exits 2."""


def open_input(name: str) -> BinaryIO:
    """The named file, or standard input for ``-``, as a binary stream."""
    if name == "-":
        if sys.stdin is None:
            raise UsageError("standard input is closed; name a FILE")
        return sys.stdin.buffer
    try:
        return open(name, "rb")
    except OSError as exc:
        raise UsageError(f"cannot read {name}: {exc.strerror}") from None


def run(prog: str, tool: Callable[[], int]) -> int:
    """Run ``tool`` and return its exit code; usage errors, closed pipes and Ctrl-C end it quietly."""
    try:
        return tool()
    except UsageError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return USAGE_ERROR
    except BrokenPipeError:
        # The reader went away (`gateway-decode big.bin | head`): stop, and keep Python from
        # complaining again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as exc:  # the input could not be read after all (a directory, a failing disk)
        print(f"{prog}: {exc.strerror or exc}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        return 130
