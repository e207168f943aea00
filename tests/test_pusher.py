"""Pusher request sizing (unit): pushes fit the link they go over."""

from gateway.pusher import request_chunks


def sizes(records, limit, max_users=64):
    return [[len(r) for r in chunk] for chunk in request_chunks(records, limit, max_users)]


def test_records_are_grouped_up_to_the_byte_limit():
    assert sizes([b"x" * 400] * 5, limit=1000) == [[400, 400], [400, 400], [400]]


def test_a_record_longer_than_the_limit_goes_alone():
    assert sizes([b"x" * 100, b"x" * 5000, b"x" * 100], limit=1000) == [[100], [5000], [100]]


def test_no_request_carries_more_than_max_users():
    assert sizes([b"x"] * 5, limit=10_000, max_users=2) == [[1, 1], [1, 1], [1]]
