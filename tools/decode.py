"""gateway-decode: captured terminal traffic in, one JSON line per frame and per decode error out."""

import argparse
import json
import re
import sys
from collections.abc import Iterable, Iterator
from typing import BinaryIO, TextIO

from protocol import FrameError, StreamDecoder
from protocol.frame import OVERHEAD
from protocol.json_form import frame_error_to_json, frame_to_json
from tools.console import open_input, run

CHUNK_SIZE = 64 * 1024
_NOT_HEX = re.compile(rb"[^0-9A-Fa-f\s]")
_WHITESPACE = b" \t\n\r\v\f"

EPILOG = """\
output: one JSON object per line, in stream order:
  a frame          {"offset": 0, "version": 1, "flags": ["response"], "address": 0,
                    "terminal_id": 101, "seq": 7, "command": "EVENTS", "message": {...}}
  a decode error   {"offset": 25, "error": "CRC mismatch", "skipped": 1}
A frame whose payload is not a valid message shows it as "payload" (hex) with the reason in
"message_error". The JSON form is described in docs/protocol.md; gateway-encode reads it back.

exit status: 0 every byte decoded into valid messages, 1 there were decode errors, 2 usage error.

examples:
  gateway-decode capture.bin
  gateway-decode --hex tests/vectors/hello_request.hex
  socat -u TCP:10.0.0.52:4370 - | gateway-decode
"""


class BadHex(ValueError):
    """Hex input holding something other than hex digits and whitespace."""


def raw_chunks(stream: BinaryIO) -> Iterator[bytes]:
    """The stream's bytes as they arrive (read1 does not wait for a full chunk on a live pipe)."""
    while chunk := stream.read1(CHUNK_SIZE):
        yield chunk


def hex_chunks(stream: BinaryIO) -> Iterator[bytes]:
    """Bytes written as hex text, whitespace anywhere ignored; BadHex says where the text goes wrong."""
    pending = b""  # a digit whose pair is in the next chunk
    line, column = 1, 1  # position of the next character
    for text in raw_chunks(stream):
        bad = _NOT_HEX.search(text)
        good = text[: bad.start()] if bad else text
        digits = pending + good.translate(None, _WHITESPACE)
        even = len(digits) & ~1
        if even:
            yield bytes.fromhex(digits[:even].decode("ascii"))
        pending = digits[even:]
        if bad:
            line, column = _after(good, line, column)
            raise BadHex(f"line {line}, column {column}: {_show(text[bad.start()])} is not a hex digit")
        line, column = _after(text, line, column)
    if pending:
        raise BadHex("the hex text ends with an odd digit: half a byte is missing")


def _after(text: bytes, line: int, column: int) -> tuple[int, int]:
    """Line and column just after ``text``, which started at (line, column)."""
    newlines = text.count(b"\n")
    if newlines:
        return line + newlines, len(text) - text.rfind(b"\n")
    return line, column + len(text)


def _show(byte: int) -> str:
    return repr(chr(byte)) if 0x20 < byte < 0x7F else f"byte 0x{byte:02x}"


def decode(chunks: Iterable[bytes], out: TextIO) -> int:
    """Write a JSON line for every frame and decode error in the stream; return how many errors."""
    decoder = StreamDecoder()
    fed = 0
    position = 0  # where the next item starts: the decoder accounts for every byte, in order
    errors = 0
    unreadable = None
    try:
        for chunk in chunks:
            fed += len(chunk)
            for item in decoder.feed(chunk):
                if isinstance(item, FrameError):
                    line = frame_error_to_json(item)
                    position = item.offset + item.skipped
                    errors += 1
                else:
                    line = {"offset": position, **frame_to_json(item)}
                    position += OVERHEAD + len(item.payload)
                    errors += "message_error" in line
                out.write(json.dumps(line) + "\n")
    except BadHex as exc:
        unreadable = FrameError(fed, str(exc))
    ending = []
    if decoder.buffered:
        ending.append(FrameError(fed - decoder.buffered, "input ends inside a frame", decoder.buffered))
    if unreadable:
        ending.append(unreadable)
    for error in ending:
        out.write(json.dumps(frame_error_to_json(error)) + "\n")
    return errors + len(ending)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="gateway-decode",
        description="Decode terminal protocol frames from a capture (raw bytes, or hex text with --hex).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "file", nargs="?", default="-", metavar="FILE", help="capture to read; - (the default) reads standard input"
    )
    parser.add_argument("--hex", action="store_true", help="the input is hex text (whitespace and newlines ignored)")
    args = parser.parse_args(argv)

    def tool() -> int:
        stream = open_input(args.file)
        chunks = hex_chunks(stream) if args.hex else raw_chunks(stream)
        return 1 if decode(chunks, sys.stdout) else 0

    return run(parser.prog, tool)


if __name__ == "__main__":
    sys.exit(main())
