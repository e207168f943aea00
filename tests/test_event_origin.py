"""Event types as people name them, and who made each change: the vendor's spellings as filters,
the origin in the API's events and in the CLI's table."""

import jsonschema
import pytest

from gateway.admin import event_line
from gateway.http.events import EVENT_TYPE, event_types
from gateway.sync.monitor import APPLIED_BY_DEVICE, DELETED_BY_SERVER, SAVE_FAILED, SAVED_FROM_DEVICE, origin_of


@pytest.mark.parametrize("spelling, stored", [
    ("User update succeeded(BioStar)", APPLIED_BY_DEVICE),
    ("User update succeeded(Device)", SAVED_FROM_DEVICE),
    ("Fail to save to the server DB", SAVE_FAILED),
])
def test_the_vendors_spellings_filter_like_ours(spelling, stored):
    assert event_types([spelling]) == (stored,)


def test_the_type_filter_schema_takes_the_vendors_spellings_and_nothing_made_up():
    jsonschema.validate("User update succeeded(BioStar)", EVENT_TYPE)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate("User update succeeded(Nowhere)", EVENT_TYPE)


def test_origin_tells_keypad_changes_from_records_the_server_sent():
    assert origin_of("ENROLL_SUCCESS", 2) == "device"
    assert origin_of("ENROLL_SUCCESS", 1) == "server"
    assert origin_of(SAVED_FROM_DEVICE, None) == "device"
    assert origin_of(DELETED_BY_SERVER, None) == "server"
    assert origin_of("VERIFY_SUCCESS", 1) is None  # a card at the door is nobody's change


def test_the_cli_event_table_has_an_origin_column():
    event = dict(id=7, occurred_ms=0, terminal_id=101, type="ENROLL_SUCCESS", user_id="1001", detail=None, origin="device")
    pushed = dict(event, type="UPDATE_SUCCESS", origin="server")
    assert "device" in event_line(event).split()
    assert "server" in event_line(pushed).split()
    assert event_line(event).index("device") < event_line(event).index("ENROLL_SUCCESS")
