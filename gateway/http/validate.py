"""Request bodies and query parameters checked with jsonschema against the JSON Schema each route
declares, the same schema the OpenAPI document shows (gateway/http/openapi.py).

The API speaks to people: of all a value's mistakes, jsonschema's ``best_match`` picks the one
to report, and it is said in one sentence naming the field ("access_groups[0] must be from 0 to
4294967295", "body has unknown field(s) colour; known: ...").
"""

from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import ValidationError, best_match

from protocol.text import PLAIN_TEXT, text_fault

# Ids and names (protocol/text.py says why): checking the PLAIN_TEXT pattern here applies the
# whole rule, NFC included.
_draft_pattern = Draft202012Validator.VALIDATORS["pattern"]


def _pattern(validator, pattern, instance, schema):
    if pattern == PLAIN_TEXT and isinstance(instance, str):
        fault = text_fault(instance)
        if fault is not None:
            yield ValidationError(fault)
        return
    yield from _draft_pattern(validator, pattern, instance, schema)


_Validator = validators.extend(Draft202012Validator, {"pattern": _pattern})
_validators: dict[int, Draft202012Validator] = {}  # by id() of a schema: schemas are module constants


class Invalid(ValueError):
    """A value that does not match its schema; the message is for the person who sent it."""


def check(schema: dict, value, where: str = "body") -> None:
    validator = _validators.get(id(schema))
    if validator is None:
        Draft202012Validator.check_schema(schema)
        validator = _validators[id(schema)] = _Validator(schema)
    error = best_match(validator.iter_errors(value))
    if error is not None:
        raise Invalid(_sentence(error, where))


def _sentence(error: ValidationError, where: str) -> str:
    field = _field(error, where)
    schema, value = error.schema, error.instance
    kind = error.validator
    if kind == "type":
        kinds = [schema["type"]] if isinstance(schema["type"], str) else schema["type"]
        return f"{field} must be {' or '.join(_TYPES.get(k, f'a {k}') for k in kinds)}"
    if kind == "enum":
        return f"{field} must be one of {', '.join(map(str, schema['enum']))}"
    if kind == "required":
        return f"{field} lacks {', '.join(name for name in schema['required'] if name not in value)}"
    if kind == "additionalProperties":
        unknown = sorted(set(value) - set(schema.get("properties", {})))
        return f"{field} has unknown field(s) {', '.join(unknown)}; known: {', '.join(schema.get('properties', {}))}"
    if kind in ("minimum", "maximum"):
        return f"{field} must be {_bounds(schema.get('minimum'), schema.get('maximum'))}"
    if kind in ("minLength", "maxLength"):
        return f"{field} length must be {_bounds(schema.get('minLength'), schema.get('maxLength'))}"
    if kind in ("anyOf", "oneOf") and "description" in schema:
        return f"{field} must be {schema['description']}"
    if kind == "pattern" and schema["pattern"] == PLAIN_TEXT:
        return f"{field} {error.message}"
    if kind == "pattern" and "description" in schema:
        return f"{field} must be {schema['description'].split(';')[0]}"
    if kind == "pattern":
        return f"{field} must match {schema['pattern']}"
    if kind == "not" and "description" in schema:  # a rule between fields (dependentSchemas), said as written
        return f"{where}: {schema['description']}"
    if kind == "uniqueItems":
        return f"{field} lists an item twice"
    if kind == "minProperties":
        return f"{field} must give at least one of {', '.join(schema.get('properties', {}))}"
    if kind == "maxItems":
        return f"{field} may hold at most {schema['maxItems']} items"
    return f"{field}: {error.message}"


def _field(error: ValidationError, where: str) -> str:
    """``cards[0].type`` for a body's field; ``where`` itself for the whole value."""
    text = "" if where == "body" and error.absolute_path else where
    for step in error.absolute_path:
        text += f"[{step}]" if isinstance(step, int) else f".{step}" if text else step
    return text


def _bounds(low, high) -> str:
    if low is not None and high is not None:
        return f"from {low} to {high}"
    return f"at least {low}" if high is None else f"at most {high}"


_TYPES = {"object": "an object", "array": "a list", "integer": "an integer", "null": "null"}
