"""Faces and photos of PUSH devices (gateway/push/faces.py, and their place in PushDevice and the
user record's wire), without sockets: the fakes of tests/test_push_device.py."""

import base64

import pytest

from gateway.push.device import LINES_SKIPPED
from gateway.push.faces import FaceAlgorithm, Listed, algorithms_in_options, copy_digest
from gateway.sync.changes import FACE_LIMIT, REFUSED, SERVER_KEPT
from gateway.sync.merge import merge_reasons, merge_vacant_fields
from gateway.sync.monitor import CHANGE_DROPPED
from protocol.errors import MessageError
from protocol.json_form import record_from_json, record_to_json
from protocol.events import EventCode, Origin
from protocol.records import (MAX_FACE_TEMPLATE, MAX_PHOTO, Face, Fingerprint, UserRecord, UserRecordWire, record_digest)
from protocol.zk.push import commands as cmd
from protocol.zk.push.commands import PushCommand, render_commands
from protocol.zk.push.server import PushServer, PushTiming
from protocol.zk.push.lines import FaceLine, PhotoLine, UserLine, parse_operlog
from simulator.push.device import PushTerminal
from test_push_device import SN, call, fetch_commands, make

USER = UserLine((("PIN", "77"), ("Name", "Ana"), ("Pri", "0"), ("Passwd", ""), ("Card", ""), ("Grp", "1"), ("TZ", "0001"), ("Verify", "0")))
FACE = FaceLine("77", 9, 0, b"\x05" * 900, "58", "1")
PHOTO = PhotoLine("77", b"\xff\xd8" + b"\x01" * 3000)
OPTIONS = b"FingerFunOn=1,FaceFunOn=1,MultiBioDataSupport=0:1:0:0:0:0:0:0:0:1,MultiBioVersion=0:10.0:0:0:0:0:0:0:0:58.1"


# -- the record's wire -------------------------------------------------------------------------------

def test_a_record_with_faces_of_another_algorithm_vector():
    """docs/protocol.md, "User record": the vector of a native face and a zkface9v58 face."""
    record = UserRecord("1042", name="Ada", faces=(Face(0, b"\x01\x02"), Face(0, b"\xa1\xa2\xa3", "zkface9v58")))
    wire = UserRecordWire.build(record)
    assert wire.hex() == "04313034328103416461000000010000020102800101000a7a6b66616365397635380003a1a2a3"
    assert UserRecordWire.parse(wire) == record


def test_records_without_foreign_faces_are_the_bytes_they_were():
    finger = Fingerprint(2, b"f", b"", False, "zk10")
    assert UserRecordWire.build(UserRecord("7", fingerprints=(finger,))).hex() == "01378000000000010200047a6b3130000166"
    with_face = UserRecordWire.build(UserRecord("7", fingerprints=(finger,), faces=(Face(1, b"xyz", "zkface2v7"),)))
    assert with_face.hex().startswith("0137800000000081"), "the count byte's top bit says an extension follows"
    assert UserRecordWire.parse(with_face).faces == (Face(1, b"xyz", "zkface2v7"),)


def test_an_unknown_extension_bit_is_refused():
    wire = bytearray(UserRecordWire.build(UserRecord("7", faces=(Face(1, b"xyz", "zkface2v7"),))))
    assert wire[:9].hex() == "013780000000008001"  # id, presence, four empty lists, count byte (no fingers, more), extension byte
    wire[8] |= 0x02
    with pytest.raises(MessageError, match="extension"):
        UserRecordWire.parse(bytes(wire))


@pytest.mark.parametrize("extension", ["00", "0100"])
def test_an_extension_that_extends_nothing_is_refused(extension):
    """"No foreign faces" is no extension: ``80 00`` and ``80 01 00`` would be two more encodings of one record."""
    wire = bytes.fromhex("0137800000000080" + extension)
    with pytest.raises(MessageError, match="extends nothing"):
        UserRecordWire.parse(wire)


@pytest.mark.parametrize("faces, problem", [
    ((Face(16, b"x", "zkface2v7"),), "face slot index"),
    ((Face(0, b"x" * (MAX_FACE_TEMPLATE + 1), "zkface9v58"),), "face template"),
    ((Face(0, b"x", "z" * 17),), "face format"),
    (tuple(Face(i, b"x" * 5000, f) for f in ("zkface2v7", "zkface2v8") for i in range(12)), "together"),
])
def test_limits_of_foreign_faces(faces, problem):
    with pytest.raises(MessageError, match=problem):
        UserRecord("7", faces=faces).validate()


def test_merge_fills_face_slots_of_each_algorithm():
    server = UserRecord("7", faces=(Face(0, b"mine", "zkface9v58"),))
    pulled = UserRecord("7", faces=(Face(0, b"theirs", "zkface9v58"), Face(0, b"nir", "zkface2v7")), photo=b"p")
    merged = merge_vacant_fields(server, pulled)
    assert merged.faces == (Face(0, b"nir", "zkface2v7"), Face(0, b"mine", "zkface9v58")) and merged.photo == b"p"


# -- lines and commands ----------------------------------------------------------------------------------

def test_face_and_photo_commands_vector():
    assert cmd.update_face(FaceLine("1001", 9, 0, b"\x01\x02\x03", "58", "1")) == (
        "DATA UPDATE BIODATA Pin=1001\tNo=0\tIndex=0\tValid=1\tDuress=0\tType=9\tMajorVer=58\tMinorVer=1\tFormat=0\tTmp=AQID")
    assert cmd.update_photo(PhotoLine("1001", b"JPEGDATA")) == "DATA UPDATE USERPIC PIN=1001\tSize=12\tContent=SlBFR0RBVEE="
    assert cmd.query_faces(9) == "DATA QUERY BIODATA Type=9"


def test_a_biophoto_of_a_visible_light_face_is_a_photo_and_of_a_palm_is_not():
    content = base64.b64encode(b"jpg").decode()
    items, bad = parse_operlog((f"BIOPHOTO PIN=5\tFileName=5.jpg\tType=9\tNo=0\tIndex=0\tSize=4\tContent={content}\n"
                                f"BIOPHOTO PIN=5\tFileName=5.jpg\tType=10\tNo=0\tIndex=0\tSize=4\tContent={content}\n").encode())
    assert bad == [] and items[0] == PhotoLine("5", b"jpg", "BIOPHOTO") and items[1].kind == "BIOPHOTO" and not isinstance(items[1], PhotoLine)
    assert parse_operlog(items[0].line().encode())[0] == [items[0]], "written back as it reads"


def test_algorithms_from_the_options_a_device_posts():
    assert algorithms_in_options({"MultiBioDataSupport": "0:1:1:0:0:0:0:0:0:1", "MultiBioVersion": "0:10.0:7.0:0:0:0:0:0:0:58.1"}) == [
        FaceAlgorithm(2, "7", "0"), FaceAlgorithm(9, "58", "1")]
    assert algorithms_in_options({"MultiBioDataSupport": "0:1", "MultiBioVersion": "0:10.0"}) == []


def test_a_copy_without_faces_or_photo_keeps_its_digest():
    listed = Listed((FaceAlgorithm(9, "58", "1"),), photos=True)
    assert copy_digest(b"12345678", {6: object()}, listed) == b"12345678"
    assert copy_digest(b"12345678", {FACE.key: FACE}, listed) != b"12345678"


# -- PushDevice --------------------------------------------------------------------------------------------

def options(device):
    assert call(device, "POST", "/iclock/cdata", {"table": "options"}, OPTIONS) == (200, b"OK")


def answer_queries(device, *lines):
    """Answer every DATA QUERY the device waits for with ``lines``; the queries' texts."""
    commands = [c for c in fetch_commands(device) if c.text.startswith("DATA QUERY")]
    if lines:
        assert call(device, "POST", "/iclock/cdata", {"table": "OPERLOG"}, ("\n".join(lines) + "\n").encode())[0] == 200
    body = "".join(f"ID={c.id}&Return=0&CMD=DATA\n" for c in commands)
    assert call(device, "POST", "/iclock/devicecmd", {}, body.encode()) == (200, b"OK")
    return [c.text for c in commands]


def test_a_face_device_lists_its_faces_and_photos_too():
    device, *_ = make()
    options(device)  # after its hello, before its first getrequest: the listing under way asks for them too
    assert answer_queries(device) == ["DATA QUERY USERINFO", "DATA QUERY FINGERTMP", "DATA QUERY BIODATA Type=9", "DATA QUERY USERPIC"]


def test_a_keypad_enrolment_with_a_face_and_photo_is_pulled_with_them():
    device, clock, events, *_ = make()
    options(device)
    answer_queries(device)
    assert call(device, "POST", "/iclock/cdata", {"table": "OPERLOG"}, "\n".join([USER.line(), FACE.line(), PHOTO.line()]).encode())[0] == 200
    assert [(e.user_id, e.code, e.sub_code) for e in events.stored] == [("77", EventCode.ENROLL_SUCCESS, Origin.DEVICE)]
    fetched = []
    device.fetch_users(["77"]).addCallback(fetched.append)
    record = fetched[0].users[0]
    assert record.faces == (Face(0, FACE.template, "zkface9v58"),) and record.photo == PHOTO.content


def test_a_face_or_photo_too_large_is_refused_for_the_device_and_reported():
    device, clock, events, *_ = make()
    answer_queries(device)
    big_face = FaceLine("77", 9, 0, b"\x05" * (MAX_FACE_TEMPLATE + 1), "58")
    big_photo = PhotoLine("77", b"\x01" * (MAX_PHOTO + 1))
    call(device, "POST", "/iclock/cdata", {"table": "OPERLOG"}, "\n".join([USER.line(), big_face.line(), big_photo.line()]).encode())
    fetched = []
    device.fetch_users(["77"]).addCallback(fetched.append)
    record = fetched[0].users[0]
    assert (record.name, record.faces, record.photo) == ("Ana", (), None), "the rest of the person is taken; nothing is cut"
    [dropped] = [m for m in events.monitoring if m["type"] == CHANGE_DROPPED]
    assert "face zkface9v58 0 of 8193 bytes" in dropped["detail"] and "photo of 16385 bytes" in dropped["detail"]


def sent_texts(device, record):
    done = []
    device.put_users([UserRecordWire.build(record)], keep_local_changes=False).addBoth(done.append)
    assert not isinstance(done[0], Exception), done
    return [c.text for c in fetch_commands(device) if not c.text.startswith("DATA QUERY")]


def test_a_put_sends_faces_of_the_devices_algorithm_and_the_photo_only():
    device, *_ = make()
    options(device)
    answer_queries(device)
    record = UserRecord("77", name="Ana", photo=b"jpg", faces=(Face(0, b"vl58", "zkface9v58"), Face(0, b"vl40", "zkface9v40"),
                                                                 Face(1, b"native")))
    texts = sent_texts(device, record)
    assert texts[1:] == [cmd.update_face(FaceLine("77", 9, 0, b"vl58", "58", "1")), cmd.update_photo(PhotoLine("77", b"jpg"))]


def test_a_device_keeps_faces_of_its_own_the_server_lacks_and_an_applied_put_costs_nothing_again():
    device, *_ = make()
    options(device)
    own = FaceLine("77", 9, 1, b"theirs", "58", "1")
    answer_queries(device, USER.line(), own.line())
    record = UserRecord("77", name="Ana", faces=(Face(0, b"vl58", "zkface9v58"),))
    texts = sent_texts(device, record)
    assert texts == [texts[0], cmd.update_face(FaceLine("77", 9, 0, b"vl58", "58", "1"))], "no delete of its index 1"
    body = "".join(f"ID={c.id}&Return=0&CMD=DATA\n" for c in device.server.commands_to_send(1e12))
    call(device, "POST", "/iclock/devicecmd", {}, body.encode())
    assert sent_texts(device, record) == [], "what it holds now is what the server would write"
    page = []
    device.list_digests("", 10).addCallback(page.append)
    answer_queries(device, USER.line(), own.line(), FaceLine("77", 9, 0, b"vl58", "58", "1").line())
    assert page[0].digests["77"] == record_digest(UserRecordWire.build(record)), "reconciliation finds it as written"


def test_a_device_without_a_face_algorithm_gets_no_faces():
    device, *_ = make()
    answer_queries(device)
    texts = sent_texts(device, UserRecord("77", name="Ana", faces=(Face(0, b"vl58", "zkface9v58"),)))
    assert [t.split(" ")[2] for t in texts] == ["USERINFO"]


def test_merge_keeps_the_records_bound_on_faces_of_other_algorithms_the_servers_first():
    server = UserRecord("7", faces=tuple(Face(i, b"s" * 4000, "zkface2v7") for i in range(12)))
    pulled = UserRecord("7", faces=tuple(Face(i, b"t" * 4000, "zkface2v8") for i in range(12)) + (Face(0, b"native"),))
    merged = merge_vacant_fields(server, pulled).validate()
    assert len([f for f in merged.faces if f.format]) == 24 and Face(0, b"native") in merged.faces  # 96,000 bytes: room for all
    over = UserRecord("7", faces=tuple(Face(i, b"u" * 5000, "zkface2v9") for i in range(12)))
    merged_again = merge_vacant_fields(merged, over)
    assert [f.format for f in merged_again.faces if f.format] == [f.format for f in merged.faces if f.format], "no room: the server's kept"
    reasons = merge_reasons(merged, over, merged_again)
    assert {(c.outcome, c.rule) for c in reasons if c.field == "faces" and c.new} == {("refused", "face beyond the limit")}


def test_a_v3_device_naming_face_algorithms_is_neither_asked_for_nor_sent_faces_or_photos():
    """Faces and photos are synced with 2.x devices only: a 3.x device would refuse 2.x syntax
    (docs/zk-push.md, "Not done yet"), and its own are kept as it holds them."""
    device, *_ = make()
    body = b"DeviceType=acc,~DeviceName=SpeedFace-V5L,MultiBioDataSupport=0:1:0:0:0:0:0:0:0:1,MultiBioVersion=0:12.0:0:0:0:0:0:0:0:58.1"
    assert call(device, "POST", "/iclock/registry", {}, body)[0] == 200
    assert answer_queries(device) == ["DATA QUERY tablename=user,fielddesc=*,filter=*", "DATA QUERY tablename=templatev10,fielddesc=*,filter=*"]
    texts = sent_texts(device, UserRecord("77", name="Ana", photo=b"jpg", faces=(Face(0, b"vl58", "zkface9v58"),)))
    assert texts and not any("BIODATA" in t or "USERPIC" in t for t in texts), texts


def test_the_json_form_names_a_faces_format_and_reads_it_back():
    record = UserRecord("1042", faces=(Face(0, b"\x01\x02"), Face(0, b"\xa1", "zkface9v58")))
    shown = record_to_json(record)
    assert shown["faces"] == [{"index": 0, "template": "0102"}, {"index": 0, "template": "a1", "format": "zkface9v58"}]
    assert record_from_json(shown) == record


def test_the_emulator_refuses_a_face_of_another_algorithm_and_keeps_its_faces_in_its_flash(tmp_path):
    device = PushTerminal("EMU1", face=(9, "58", "1"))
    device.enroll("1", name="Ann", face=True, photo=100)
    refused = device.execute(PushCommand(5, cmd.update_face(FaceLine("1", 9, 0, b"x", "40"))))[1]
    taken = device.execute(PushCommand(6, cmd.update_face(FaceLine("1", 9, 0, b"y", "58", "2"))))[1]
    assert (refused.code, taken.code) == (-30, 0) and device.faces["1"][0].template == b"y"
    device.save(str(tmp_path / "flash.json"))
    again = PushTerminal.load(str(tmp_path / "flash.json"), "EMU1")
    assert (again.face, again.faces, again.photos) == (device.face, device.faces, device.photos)


def test_a_getrequest_answer_stays_under_the_devices_download_limit():
    server = PushServer(SN, PushTiming(per_request_bytes=50_000))
    photo = cmd.update_photo(PhotoLine("1", b"\xff" * 16_000))  # about 21 kB
    server.take([PushCommand(i, photo) for i in range(1, 5)])
    first = server.commands_to_send(0)
    assert [c.id for c in first] == [1, 2] and len(render_commands(first)) < 50_000
    assert [c.id for c in server.commands_to_send(0)] == [3, 4], "the rest at the next getrequest"


def apply_all(device):
    """The device applies every command it was sent."""
    body = "".join(f"ID={c.id}&Return=0&CMD=DATA\n" for c in device.server.commands_to_send(1e12))
    assert call(device, "POST", "/iclock/devicecmd", {}, body.encode()) == (200, b"OK")


def list_again(device, user_line, photo_answer=0):
    """A reconciliation's listing, the device holding ``user_line`` (and no photo); its page."""
    page = []
    device.list_digests("", 10).addCallback(page.append)
    queries = [c for c in fetch_commands(device) if c.text.startswith("DATA QUERY")]
    assert call(device, "POST", "/iclock/cdata", {"table": "OPERLOG"}, (user_line + "\n").encode())[0] == 200
    body = "".join(f"ID={c.id}&Return={photo_answer if c.text == cmd.query_photos() else 0}&CMD=DATA\n" for c in queries)
    assert call(device, "POST", "/iclock/devicecmd", {}, body.encode()) == (200, b"OK")
    return page[0]


def test_a_fingerprint_only_device_is_sent_no_photo_and_its_listings_find_nothing_to_pull():
    """Its listing is not asked for photos: a photo sent to it would be missing from every listing,
    taken for an edit at the device, pulled, and sent again, for ever."""
    device, clock, events, *_ = make()
    answer_queries(device)  # no options: no face algorithm
    record = UserRecord("77", name="Ana", photo=b"\xff\xd8jpg")
    texts = sent_texts(device, record)
    assert [t.split(" ")[2] for t in texts] == ["USERINFO"]
    apply_all(device)
    user_line = "USER " + texts[0].split(" ", 3)[3]
    before = len(events.stored)
    for _ in range(2):
        page = list_again(device, user_line)
        assert events.stored[before:] == [], "no device-origin change"
        assert page.digests["77"] == record_digest(UserRecordWire.build(record)), "reconciliation finds it as written"
        assert sent_texts(device, record) == []


def test_a_face_device_refusing_the_photo_query_is_sent_no_photo_again_and_finds_nothing_to_pull():
    """docs/zk-push.md: a device may not know DATA QUERY USERPIC (-1002); the photo sent before it said
    so is then no edit at the device, and no photo goes to it again."""
    device, clock, events, *_ = make()
    options(device)
    answer_queries(device)
    record = UserRecord("77", name="Ana", photo=b"\xff\xd8jpg")
    texts = sent_texts(device, record)
    assert texts[-1] == cmd.update_photo(PhotoLine("77", b"\xff\xd8jpg"))
    apply_all(device)
    user_line = "USER " + texts[0].split(" ", 3)[3]
    before = len(events.stored)
    list_again(device, user_line, photo_answer=-1002)
    for _ in range(2):
        page = list_again(device, user_line)
        assert events.stored[before:] == [], "no device-origin change"
        assert page.digests["77"] == record_digest(UserRecordWire.build(record))
        assert sent_texts(device, record) == []
    assert not any("USERPIC" in t for t in sent_texts(device, UserRecord("77", name="Ana", photo=b"\xff\xd8new")))


def test_a_face_of_another_algorithm_is_merged_whole_or_not_at_all():
    """A near-infrared face is twelve templates that work only together: slots of two enrolments never mix."""
    nir = lambda fill, count, size=100: tuple(Face(i, bytes([fill]) * size, "zkface2v7") for i in range(count))
    partial = UserRecord("7", faces=nir(1, 6))
    pulled = UserRecord("7", faces=nir(2, 12))
    merged = merge_vacant_fields(partial, pulled)
    assert merged.faces == partial.faces, "the server holds that format: none of the device's slots 6-11 join it"
    reasons = merge_reasons(partial, pulled, merged)
    assert {(c.outcome, c.rule) for c in reasons if c.field == "faces" and c.new} == {(REFUSED, SERVER_KEPT)}
    server = UserRecord("7", faces=tuple(Face(i, b"s" * 4000, "zkface2v8") for i in range(12)))  # 48,000 bytes
    big = UserRecord("7", faces=nir(3, 12, 5000))  # 60,000 bytes: room for nine of them, not for the face
    merged = merge_vacant_fields(server, big)
    assert merged.faces == server.faces
    assert {(c.outcome, c.rule) for c in merge_reasons(server, big, merged) if c.field == "faces" and c.new} == {(REFUSED, FACE_LIMIT)}


def test_a_pull_takes_a_face_of_another_algorithm_whole_or_refuses_it_whole():
    device, clock, events, *_ = make()
    answer_queries(device)
    nir = [FaceLine("77", 2, i, b"\x02" * (MAX_FACE_TEMPLATE + 1 if i == 11 else 100), "7") for i in range(12)]
    call(device, "POST", "/iclock/cdata", {"table": "OPERLOG"}, "\n".join([USER.line(), FACE.line()] + [f.line() for f in nir]).encode())
    fetched = []
    device.fetch_users(["77"]).addCallback(fetched.append)
    assert fetched[0].users[0].faces == (Face(0, FACE.template, "zkface9v58"),), "none of the twelve: the last is too large"
    [dropped] = [m for m in events.monitoring if m["type"] == CHANGE_DROPPED]
    assert "face zkface2v7 (12 templates, 9293 bytes): face zkface2v7 11 of 8193 bytes" in dropped["detail"]


def test_one_face_algorithm_per_type_the_options_one_and_each_type_asked_once():
    """Each face line of a new MajorVer used to add an algorithm and, during a listing, a query: 300
    of them passed the command queue's bound, and every push was then refused."""
    device, *_ = make(max_commands=64)
    fetch_commands(device)  # a listing under way
    lines = [FaceLine("77", 9, 0, b"\x01", str(major)).line() for major in range(1, 301)]
    assert call(device, "POST", "/iclock/cdata", {"table": "OPERLOG"}, "\n".join(lines).encode())[0] == 200
    assert list(device.memory.face_algorithms.values()) == [FaceAlgorithm(9, "1", "0")]
    assert device.server.waiting == 4, "users, fingers, faces of Type 9 once, photos"
    options(device)
    assert list(device.memory.face_algorithms.values()) == [FaceAlgorithm(9, "58", "1")], "the options' algorithm wins"
    assert device.server.waiting == 4, "Type 9 and the photos were asked already"


def test_a_server_face_never_overwrites_a_device_face_of_another_algorithm():
    device, *_ = make()
    options(device)  # Type 9, MajorVer 58
    older = FaceLine("77", 9, 0, b"vl40", "40")
    answer_queries(device, USER.line(), older.line())
    answer_queries(device)  # a query its face may have asked for
    texts = sent_texts(device, UserRecord("77", name="Ana Lima", faces=(Face(0, b"vl58", "zkface9v58"),)))
    assert not any("BIODATA" in t for t in texts), "its own face of MajorVer 40 stays"


def test_faces_and_photos_beyond_a_records_bounds_are_kept_as_digest_and_size_only():
    device, *_ = make()
    answer_queries(device)
    big_face, big_photo = FaceLine("77", 9, 0, b"\x05" * (MAX_FACE_TEMPLATE + 1), "58"), PhotoLine("77", b"\x01" * (MAX_PHOTO + 1))
    call(device, "POST", "/iclock/cdata", {"table": "OPERLOG"}, "\n".join([USER.line(), big_face.line(), big_photo.line()]).encode())
    held = device.memory.fingers["77"]
    assert {type(p).__name__ for p in held.values()} == {"Summary"}
    assert sorted(p.size for p in held.values()) == [MAX_FACE_TEMPLATE + 1, MAX_PHOTO + 1] and all(len(p.sha256) == 32 for p in held.values())


def test_a_face_line_of_another_body_part_number_is_skipped_and_the_person_still_pulled():
    """A face is No=0: a second line of the same Type, MajorVer and Index under another No used to
    make the pulled record invalid (two templates in one slot), and the person was not pulled."""
    device, clock, events, *_ = make()
    answer_queries(device)
    other = FACE.line().replace("No=0", "No=1").replace(base64.b64encode(FACE.template).decode(), "AQID")
    call(device, "POST", "/iclock/cdata", {"table": "OPERLOG"}, "\n".join([USER.line(), FACE.line(), other]).encode())
    [skipped] = [m for m in events.monitoring if m["type"] == LINES_SKIPPED]
    assert "a face's No is 1, not 0" in skipped["detail"]
    fetched = []
    device.fetch_users(["77"]).addCallback(fetched.append)
    assert fetched[0].users[0].faces == (Face(0, FACE.template, "zkface9v58"),)
