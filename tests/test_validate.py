"""Request bodies and query parameters are checked with jsonschema against the schemas the
routes declare, and the OpenAPI document shows those same schemas: the two cannot drift."""

import pytest
from jsonschema import Draft202012Validator

from gateway.http import users
from gateway.http.openapi import document
from gateway.http.site import api_routes
from gateway.http.validate import Invalid, check

ROUTES = api_routes()


def test_the_document_shows_the_very_schemas_requests_are_checked_against():
    spec = document(ROUTES)
    for route in ROUTES:
        operation = spec["paths"][route.path][route.method.lower()]
        if route.body is not None:
            assert operation["requestBody"]["content"]["application/json"]["schema"] is route.body
        shown = {p["name"]: p["schema"] for p in operation["parameters"]}
        for param in route.params:
            schema = shown[param.name]["items"] if param.repeated else shown[param.name]
            assert {k: v for k, v in schema.items() if k != "default"} == param.schema
            Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize("body, complaint", [
    ({"user_id": ""}, "user_id length must be from 1 to 32"),
    ({"user_id": "x", "cards": [{"type": "CSN"}]}, "cards[0] lacks data"),
    ({"user_id": "x", "cards": [{"type": "CSN", "data": "00", "pin": 1}]}, "cards[0] has unknown field(s) pin; known: type, data"),
    ({"user_id": "x", "validity": {"start": 1, "end": 2**32}}, "validity.end must be from 0 to 4294967295"),
    ({"user_id": "x", "access_groups": list(range(1000))}, "access_groups may hold at most"),
    ({"user_id": "x", "security_level": "high"}, "security_level must be an integer or null"),
    ({"user_id": "x", "disabled": 0}, "disabled must be a boolean"),
])
def test_a_body_that_breaks_its_schema_is_refused_in_one_sentence(body, complaint):
    with pytest.raises(Invalid) as refused:
        check(users.CREATE_BODY, body)
    assert str(refused.value).startswith(complaint)


def test_a_body_that_keeps_its_schema_passes():
    check(users.CREATE_BODY, {"user_id": "x", "name": None, "access_groups": [1, 2], "cards": [{"type": "CSN", "data": "0a"}],
                              "validity": {"start": 0, "end": 10}, "disabled": True})
