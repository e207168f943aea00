"""Codec benchmark: frames per second to decode and encode, and what compiling construct buys.

Prints a table; ``--json FILE`` also writes the figures. They come from one run on one machine:
compare the ratios, not the absolute numbers. It measures and never fails on slowness.

    python benchmarks/codec.py [--quick] [--json FILE]
"""

import argparse
import json
import platform
import struct
import sys
import timeit
from pathlib import Path

import construct

from protocol import (
    Card,
    CardType,
    Command,
    Event,
    EventCode,
    Fingerprint,
    Origin,
    StreamDecoder,
    UserRecord,
    hash_pin,
    parse_body,
    request,
)
from protocol.events import EventWire
from protocol.frame import HEADER_SIZE, SOF, FrameHeader, FrameHeaderCompiled
from protocol.messages import body_struct
from protocol.records import FINGER_TEMPLATE_SIZE, UserRecordWire

_HEADER = struct.Struct(">2sBBBIIHIH")


def struct_header(data: bytes) -> tuple:
    """The baseline: the frame header read by hand with ``struct``, start of frame checked."""
    fields = _HEADER.unpack_from(data)
    if fields[0] != SOF:
        raise ValueError("no start of frame")
    return fields


def event_batch() -> list[Event]:
    return [
        Event(1000 + i, 1_700_000_000_000 + i, EventCode.UPDATE_SUCCESS, Origin.DEVICE, f"user-{i:05d}") for i in range(256)
    ]


def user_with_two_fingers() -> UserRecord:
    template = bytes(range(256)) + bytes(range(FINGER_TEMPLATE_SIZE - 256))
    return UserRecord(
        user_id="user-00042",
        name="Ada Lovelace",
        pin_hash=hash_pin("user-00042", "2468"),
        validity=(1_704_067_200, 1_830_297_599),
        access_groups=(1, 7),
        cards=(Card(CardType.SMART_CARD, bytes(16)),),
        fingerprints=(Fingerprint(0, template, template), Fingerprint(5, template, template)),
    )


def per_second(fn, quick: bool) -> float:
    """Calls of ``fn`` per second: the best of three timings of about 0.2 s each (a few calls if quick)."""
    timer = timeit.Timer(fn)
    if quick:
        number = 3
        return number / timer.timeit(number)
    number, _ = timer.autorange()
    return number / min(timer.repeat(3, number))


def frame_codec(name: str, command: Command, body: dict, quick: bool) -> dict:
    """Frames per second through the whole codec both ways, and the body parse compiled vs plain."""
    data = request(command, body)
    frame = StreamDecoder().feed(data)[0]
    plain = body_struct(command, False, compiled=False)
    result = {
        "frame_bytes": len(data),
        "decode_frames_per_s": per_second(lambda: parse_body(StreamDecoder().feed(data)[0]), quick),
        "encode_frames_per_s": per_second(lambda: request(command, body), quick),
        "body_parse_compiled_us": 1e6 / per_second(lambda: body_struct(command, False).parse(frame.payload), quick),
        "body_parse_plain_us": 1e6 / per_second(lambda: plain.parse(frame.payload), quick),
    }
    result["plain_vs_compiled"] = result["body_parse_plain_us"] / result["body_parse_compiled_us"]
    return {name: result}


def header_parse(quick: bool) -> dict:
    head = request(Command.KEEPALIVE)[:HEADER_SIZE]
    result = {
        "struct_us": 1e6 / per_second(lambda: struct_header(head), quick),
        "compiled_us": 1e6 / per_second(lambda: FrameHeaderCompiled.parse(head), quick),
        "plain_us": 1e6 / per_second(lambda: FrameHeader.parse(head), quick),
    }
    result["compiled_vs_struct"] = result["compiled_us"] / result["struct_us"]
    result["plain_vs_struct"] = result["plain_us"] / result["struct_us"]
    result["plain_vs_compiled"] = result["plain_us"] / result["compiled_us"]
    return {"frame_header_parse": result}


def stream_decoder(quick: bool) -> dict:
    """The decoder alone, on a burst of small frames: the framing cost a log storm or a noisy line pays."""
    burst = b"".join(request(Command.KEEPALIVE, terminal_id=9, seq=n) for n in range(1000))
    noise = (SOF + bytes(range(40))) * 1000  # a start-of-frame pattern in each 42 bytes, no frame

    def in_chunks(size: int) -> None:
        decoder = StreamDecoder()
        for start in range(0, len(burst), size):
            decoder.feed(burst[start : start + size])

    result = {
        "one_chunk_frames_per_s": 1000 * per_second(lambda: StreamDecoder().feed(burst), quick),
        "chunks_of_7_frames_per_s": 1000 * per_second(lambda: in_chunks(7), quick),
        "false_starts_per_s": 1000 * per_second(lambda: StreamDecoder().feed(noise), quick),
    }
    return {"stream_decoder": result}


def wire_item(name: str, wire, value, quick: bool) -> dict:
    """One event or record alone, compiled as the bodies use it vs its declaration run plainly."""
    data = wire.build(value)
    plain = wire.defersubcon
    result = {
        "parse_compiled_us": 1e6 / per_second(lambda: wire.parse(data), quick),
        "parse_plain_us": 1e6 / per_second(lambda: plain.parse(data), quick),
        "build_compiled_us": 1e6 / per_second(lambda: wire.build(value), quick),
        "build_plain_us": 1e6 / per_second(lambda: plain.build(value), quick),
    }
    result["plain_vs_compiled"] = result["parse_plain_us"] / result["parse_compiled_us"]
    return {name: result}


def run(quick: bool) -> dict:
    results = {
        "python": platform.python_version(),
        "construct": construct.__version__,
        "quick": quick,
        **header_parse(quick),
        **stream_decoder(quick),
        **frame_codec("event_batch_256", Command.EVENTS, {"events": event_batch()}, quick),
        **frame_codec(
            "user_record_two_fingers",
            Command.PUT_USERS,
            {"keep_local_changes": False, "users": [user_with_two_fingers()]},
            quick,
        ),
        **wire_item("event_wire", EventWire, event_batch()[0], quick),
        **wire_item("user_record_wire", UserRecordWire, user_with_two_fingers(), quick),
    }
    results["event_batch_256"]["events_per_s"] = 256e6 / results["event_batch_256"]["body_parse_compiled_us"]
    return results


CASES = {"event_batch_256": "event batch (256 events)", "user_record_two_fingers": "user record, two fingers"}
ITEMS = {"event_wire": "event", "user_record_wire": "user record, two fingers"}


def table(results: dict) -> str:
    head, stream = results["frame_header_parse"], results["stream_decoder"]
    lines = [
        f"codec benchmark: Python {results['python']}, construct {results['construct']}"
        + (" (--quick: figures are meaningless)" if results["quick"] else ""),
        "",
        "frame header parse          µs/op   vs struct",
        f"  struct (baseline)      {head['struct_us']:8.2f}   {1:8.1f}x",
        f"  construct compiled     {head['compiled_us']:8.2f}   {head['compiled_vs_struct']:8.1f}x",
        f"  construct plain        {head['plain_us']:8.2f}   {head['plain_vs_struct']:8.1f}x",
        "",
        f"stream decoder alone, 1,000 keepalives ({len(request(Command.KEEPALIVE))} bytes each)      per s",
        f"  frames, in one chunk           {stream['one_chunk_frames_per_s']:12,.0f}",
        f"  frames, in chunks of 7 bytes   {stream['chunks_of_7_frames_per_s']:12,.0f}",
        f"  false starts skipped in noise  {stream['false_starts_per_s']:12,.0f}",
        "",
        "frames                        bytes  decode/s  encode/s  body parse µs: compiled   plain  plain/compiled",
    ]
    for key, label in CASES.items():
        r = results[key]
        lines.append(
            f"  {label:26} {r['frame_bytes']:7d} {r['decode_frames_per_s']:9.0f} {r['encode_frames_per_s']:9.0f}"
            f"  {r['body_parse_compiled_us']:22.1f} {r['body_parse_plain_us']:7.1f} {r['plain_vs_compiled']:14.1f}x"
        )
    events_per_s = results["event_batch_256"]["events_per_s"]
    lines += [
        "  (plain: the body's own fields; the events and records in it are compiled either way)",
        f"  event batch body: {events_per_s:,.0f} events/s, {1e6 / events_per_s:.2f} µs per event",
        "",
        "one item                      parse µs: compiled   plain  plain/compiled   build µs: compiled   plain",
    ]
    for key, label in ITEMS.items():
        r = results[key]
        lines.append(
            f"  {label:26} {r['parse_compiled_us']:20.1f} {r['parse_plain_us']:7.1f} {r['plain_vs_compiled']:14.1f}x"
            f" {r['build_compiled_us']:19.1f} {r['build_plain_us']:7.1f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Measure the protocol codec: frames/s, and compiled vs plain construct vs struct."
    )
    parser.add_argument("--quick", action="store_true", help="a few iterations only, to check the benchmark runs")
    parser.add_argument("--json", metavar="FILE", type=Path, help="also write the figures to FILE as JSON")
    args = parser.parse_args(argv)
    results = run(args.quick)
    print(table(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nfigures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
