"""gateway-encode: JSON lines as gateway-decode prints them in, the frames they describe out."""

import argparse
import json
import sys
from collections.abc import Iterable
from typing import BinaryIO

from protocol import Frame, MessageError, encode_frame
from protocol.json_form import frame_from_json, is_frame_error_json
from tools.console import open_input, run

EPILOG = """\
input: one JSON object per line, a frame as gateway-decode prints it, for example
  {"version": 1, "flags": [], "address": 0, "terminal_id": 0, "seq": 1, "command": "KEEPALIVE", "message": {}}
Blank lines and gateway-decode's error lines ({"error": ...}) are skipped; "offset" and
"message_error" are ignored. The JSON form is described in docs/protocol.md.

A line that describes no valid frame is reported on standard error with its line number; the
other lines are still encoded.

exit status: 0 every line encoded, 1 some lines were bad, 2 usage error.

examples:
  gateway-decode capture.bin | gateway-encode > same-capture.bin
  gateway-encode --hex frames.jsonl
"""


def read_frame(line: bytes) -> Frame | None:
    """The frame a line describes, None if it describes none on purpose; MessageError if it is wrong."""
    try:
        text = line.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise MessageError("not UTF-8 text") from None
    if not text:
        return None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MessageError(f"not JSON: {exc.msg} at column {exc.colno}") from None
    except (ValueError, RecursionError) as exc:  # a number too long to read, nesting too deep
        raise MessageError(f"not JSON this tool can read: {exc}") from None
    if is_frame_error_json(obj):
        return None
    return frame_from_json(obj)


def encode(lines: Iterable[bytes], out: BinaryIO, as_hex: bool, prog: str) -> int:
    """Write the frame of every good line to ``out``; report bad ones on stderr; return how many were bad."""
    bad = 0
    for number, line in enumerate(lines, 1):
        try:
            frame = read_frame(line)
            if frame is None:
                continue
            data = encode_frame(frame)
        except MessageError as exc:
            print(f"{prog}: line {number}: {exc}", file=sys.stderr)
            bad += 1
            continue
        out.write(data.hex().encode() + b"\n" if as_hex else data)
    return bad


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="gateway-encode",
        description="Encode terminal protocol frames from JSON lines (the inverse of gateway-decode).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "file", nargs="?", default="-", metavar="FILE", help="JSON lines to read; - (the default) reads standard input"
    )
    parser.add_argument("--hex", action="store_true", help="write each frame as a line of hex text instead of raw bytes")
    args = parser.parse_args(argv)

    def tool() -> int:
        bad = encode(open_input(args.file), sys.stdout.buffer, args.hex, parser.prog)
        sys.stdout.buffer.flush()
        return 1 if bad else 0

    return run(parser.prog, tool)


if __name__ == "__main__":
    sys.exit(main())
