"""The installed console scripts gateway-decode and gateway-encode, and the codec benchmark, run for real."""

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VECTORS = ROOT / "tests" / "vectors"
NAMES = sorted(path.stem for path in VECTORS.glob("*.hex"))


def run(tool: str, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name(tool)
    if not script.exists():
        pytest.fail(f"{script} is missing: install the project (make test does: pip install -e '.[test]')")
    return subprocess.run([str(script), *args], input=stdin, capture_output=True, timeout=60, cwd=ROOT)


def vector_bytes(name: str) -> bytes:
    return bytes.fromhex((VECTORS / f"{name}.hex").read_text())


def vector_json(name: str) -> dict:
    return json.loads((VECTORS / f"{name}.json").read_text())


def json_lines(out: bytes) -> list[dict]:
    return [json.loads(line) for line in out.decode().splitlines()]


def assert_no_traceback(result: subprocess.CompletedProcess) -> None:
    assert b"Traceback" not in result.stderr, result.stderr.decode()


def test_encode_then_decode_round_trips_every_vector():
    lines = "".join(json.dumps(vector_json(name)) + "\n" for name in NAMES).encode()
    encoded = run("gateway-encode", stdin=lines)
    assert encoded.returncode == 0, encoded.stderr.decode()
    assert encoded.stdout == b"".join(vector_bytes(name) for name in NAMES)

    decoded = run("gateway-decode", stdin=encoded.stdout)
    assert decoded.returncode == 0, decoded.stderr.decode()
    offset = 0
    for name, line in zip(NAMES, json_lines(decoded.stdout), strict=True):
        assert line.pop("offset") == offset
        assert line == vector_json(name)
        offset += len(vector_bytes(name))


def test_decode_reads_a_file_and_hex_text():
    name = "events_request"
    from_file = run("gateway-decode", str(VECTORS / f"{name}.hex"), "--hex")
    from_stdin = run("gateway-decode", "--hex", "-", stdin=b"  " + " \n".join(vector_bytes(name).hex()).encode())
    for result in (from_file, from_stdin):
        assert result.returncode == 0, result.stderr.decode()
        [line] = json_lines(result.stdout)
        assert line == {"offset": 0, **vector_json(name)}


def test_decode_reports_garbage_with_offsets_and_keeps_the_frames_around_it():
    frame = vector_bytes("keepalive_request")
    broken = bytearray(vector_bytes("time_sync_request"))
    broken[-1] ^= 0xFF  # bad CRC
    stream = b"noise" + frame + bytes(broken) + frame + frame[:10]
    result = run("gateway-decode", stdin=stream)
    assert result.returncode == 1
    assert result.stderr == b""
    lines = json_lines(result.stdout)
    assert [line.get("command") for line in lines if "error" not in line] == ["KEEPALIVE", "KEEPALIVE"]
    errors = [line for line in lines if "error" in line]
    assert errors[0] == {"offset": 0, "error": "5 bytes outside any frame skipped", "skipped": 5}
    assert errors[1]["offset"] == 5 + len(frame) and "CRC mismatch" in errors[1]["error"]
    assert errors[-1] == {"offset": len(stream) - 10, "error": "input ends inside a frame", "skipped": 10}


def test_decode_shows_a_frame_with_an_invalid_message_raw_and_fails():
    obj = {key: value for key, value in vector_json("poll_request").items() if key != "message"}
    obj["payload"] = "00" * 9  # a POLL request body is 10 bytes
    encoded = run("gateway-encode", stdin=json.dumps(obj).encode())
    assert encoded.returncode == 0, encoded.stderr.decode()
    result = run("gateway-decode", stdin=encoded.stdout)
    assert result.returncode == 1
    [line] = json_lines(result.stdout)
    assert line["payload"] == obj["payload"] and line["message_error"].startswith("bad POLL request")


GARBAGE_INPUTS = {
    "random bytes": lambda rng: rng.randbytes(rng.randrange(1, 50_000)),
    "frames inside random bytes": lambda rng: rng.randbytes(999) + vector_bytes("get_users_response") + rng.randbytes(77),
    "nothing but start-of-frame markers": lambda rng: b"\xa5\x5a" * rng.randrange(1, 5000),
}


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("kind", GARBAGE_INPUTS)
@pytest.mark.parametrize("as_hex", [False, True], ids=["raw", "hex"])
def test_decode_never_tracebacks_on_garbage(kind, as_hex, seed):
    data = GARBAGE_INPUTS[kind](random.Random(seed))
    for args, stdin in ((["--hex"], data.hex().encode()), (["--hex"], data)) if as_hex else (([], data),):
        result = run("gateway-decode", *args, stdin=stdin)  # the second --hex run reads binary as hex
        assert_no_traceback(result)
        assert result.returncode in (0, 1)
        assert all("offset" in line for line in json_lines(result.stdout))


def test_decode_says_where_hex_input_goes_wrong():
    result = run("gateway-decode", "--hex", stdin=b"a55a\n01 0z")
    assert result.returncode == 1
    assert json_lines(result.stdout)[-1] == {"offset": 3, "error": "line 2, column 5: 'z' is not a hex digit", "skipped": 0}
    odd = run("gateway-decode", "--hex", stdin=b"a55a0")
    assert odd.returncode == 1 and "odd digit" in json_lines(odd.stdout)[-1]["error"]


def test_decode_streams_a_big_input():
    frame = vector_bytes("get_users_response")
    result = run("gateway-decode", stdin=frame * 600)  # about 1 MB, many read chunks
    assert result.returncode == 0
    lines = json_lines(result.stdout)
    assert len(lines) == 600 and lines[-1]["offset"] == 599 * len(frame)


def test_empty_input_decodes_to_nothing():
    for tool in ("gateway-decode", "gateway-encode"):
        result = run(tool)
        assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")


@pytest.mark.parametrize("tool", ["gateway-decode", "gateway-encode"])
def test_usage_errors_exit_2_in_one_line(tool):
    missing = run(tool, "/nonexistent/capture.bin")
    assert missing.returncode == 2
    expected = f"{tool}: cannot read /nonexistent/capture.bin: No such file or directory"
    assert missing.stderr.decode().splitlines() == [expected]
    assert run(tool, "--no-such-option").returncode == 2
    helped = run(tool, "--help")
    assert helped.returncode == 0 and b"exit status" in helped.stdout


def test_encode_reports_each_bad_line_by_number_and_encodes_the_rest():
    good = json.dumps(vector_json("keepalive_request"))
    lines = [
        good,
        "not json",
        json.dumps({**vector_json("keepalive_request"), "command": "NOPE"}),
        json.dumps({"offset": 3, "error": "CRC mismatch", "skipped": 1}),  # gateway-decode's error lines are skipped
        "",
        json.dumps({**vector_json("poll_request"), "message": {"ack_through": 1}}),
        b"\xff\xfe".decode("latin-1"),
        good,
    ]
    result = run("gateway-encode", "--hex", stdin="\n".join(lines).encode("latin-1"))
    assert result.returncode == 1
    assert result.stdout.decode().split() == [vector_bytes("keepalive_request").hex()] * 2
    errors = result.stderr.decode().splitlines()
    assert [error.split(": ")[1] for error in errors] == ["line 2", "line 3", "line 6", "line 7"]
    assert "NOPE" in errors[1] and "message.max_events: required field missing" in errors[2]
    assert_no_traceback(result)


def test_benchmark_quick_run_writes_its_figures(tmp_path):
    out = tmp_path / "codec.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "codec.py"), "--quick", "--json", str(out)],
        capture_output=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr.decode()
    figures = json.loads(out.read_text())
    assert figures["quick"] is True
    assert {"struct_us", "compiled_us", "plain_us", "compiled_vs_struct"} <= set(figures["frame_header_parse"])
    assert {"one_chunk_frames_per_s", "chunks_of_7_frames_per_s", "false_starts_per_s"} <= set(figures["stream_decoder"])
    for case in ("event_batch_256", "user_record_two_fingers"):
        assert {"decode_frames_per_s", "encode_frames_per_s", "plain_vs_compiled"} <= set(figures[case])
