"""Golden vectors: each decodes to its JSON, each JSON encodes to its bytes, and the spec shows them all."""

import json

import pytest

from protocol import Command, Frame, StreamDecoder, encode_frame
from protocol.json_form import frame_from_json, frame_to_json
from vectors.generate import SPEC, VECTOR_DIR, build_vectors, render_files, render_spec_section

NAMES = sorted(path.stem for path in VECTOR_DIR.glob("*.hex"))


def load(name: str) -> tuple[bytes, dict]:
    data = bytes.fromhex((VECTOR_DIR / f"{name}.hex").read_text())
    return data, json.loads((VECTOR_DIR / f"{name}.json").read_text())


@pytest.mark.parametrize("name", NAMES)
def test_bytes_decode_to_the_json(name):
    data, expected = load(name)
    [frame] = StreamDecoder().feed(data)
    assert isinstance(frame, Frame)
    assert frame_to_json(frame) == expected
    assert "message" in expected, "a vector must be a valid message"


@pytest.mark.parametrize("name", NAMES)
def test_json_encodes_to_the_bytes(name):
    data, obj = load(name)
    assert encode_frame(frame_from_json(obj)) == data


def test_every_request_and_response_and_an_error_reply_has_a_vector():
    kinds = {(obj["command"], tuple(obj["flags"])) for obj in (load(name)[1] for name in NAMES)}
    for command in Command:
        assert (command.name, ()) in kinds, f"no vector for the {command.name} request"
        assert (command.name, ("response",)) in kinds, f"no vector for the {command.name} response"
    assert any(flags == ("response", "error") for _, flags in kinds), "no vector for an error reply"


def test_the_files_are_what_generate_py_writes():
    on_disk = {path.name: path.read_text() for path in VECTOR_DIR.iterdir() if path.suffix in (".hex", ".json")}
    assert on_disk == render_files(build_vectors()), "run python tests/vectors/generate.py"


def test_the_spec_shows_every_vector():
    spec = "".join(SPEC.read_text().split())  # the spec wraps long hex over several lines
    for name in NAMES:
        data, _ = load(name)
        assert data.hex() in spec, f"docs/protocol.md lacks vector {name}"


def test_the_spec_section_is_current():
    assert render_spec_section(build_vectors()) in SPEC.read_text(), "run python tests/vectors/generate.py"
