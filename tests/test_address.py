"""HOST:PORT, as every side reads it (protocol/address.py)."""

import pytest

from protocol.address import AddressError, parse_host_port


def test_host_and_port():
    assert parse_host_port("10.0.0.5:4370") == ("10.0.0.5", 4370)
    assert parse_host_port("gw.example:1") == ("gw.example", 1)


def test_a_default_port_admits_a_bare_host():
    assert parse_host_port("10.0.0.61", 4370) == ("10.0.0.61", 4370)
    assert parse_host_port("10.0.0.61:5000", 4370) == ("10.0.0.61", 5000)


@pytest.mark.parametrize("text, default", [("10.0.0.5", None), (":4370", None), ("h:0", None), ("h:65536", None),
                                           ("h:port", None), ("h:port", 4370), ("", 4370)])
def test_anything_else_is_refused_saying_what_was_given(text, default):
    with pytest.raises(AddressError, match=f"got {text!r}"):
        parse_host_port(text, default)
