"""Request bodies checked against the JSON Schema each route declares.

Only the subset the API uses (type, properties, required, additionalProperties, items, enum,
minimum, maximum, minLength, maxLength, maxItems), so one declaration both checks a body and
documents it in the OpenAPI document. A mismatch names the field and what it must be.
"""

_PYTHON_TYPES = {
    "object": dict,
    "array": list,
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
    "null": type(None),
}


class Invalid(ValueError):
    """A body that does not match its schema; the message is for the person who sent it."""


def check(schema: dict, value, where: str = "body") -> None:
    kinds = schema.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        if not any(_is(value, kind) for kind in kinds):
            raise Invalid(f"{where} must be {' or '.join(_describe(k) for k in kinds)}")
    if "enum" in schema and value not in schema["enum"]:
        raise Invalid(f"{where} must be one of {', '.join(map(str, schema['enum']))}")
    if isinstance(value, dict):
        _check_object(schema, value, where)
    elif isinstance(value, list):
        if len(value) > schema.get("maxItems", len(value)):
            raise Invalid(f"{where} may hold at most {schema['maxItems']} items")
        for i, item in enumerate(value):
            check(schema.get("items", {}), item, f"{where}[{i}]")
    elif isinstance(value, str):
        check_range(len(value), schema.get("minLength"), schema.get("maxLength"), f"{where} length")
    elif isinstance(value, int) and not isinstance(value, bool):
        check_range(value, schema.get("minimum"), schema.get("maximum"), where)


def check_range(value: int, low: int | None, high: int | None, what: str) -> None:
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"from {low} to {high}" if low is not None and high is not None else f"at least {low}" if high is None else f"at most {high}"
        raise Invalid(f"{what} must be {bounds}")


def _check_object(schema: dict, value: dict, where: str) -> None:
    properties = schema.get("properties", {})
    missing = [name for name in schema.get("required", ()) if name not in value]
    if missing:
        raise Invalid(f"{where} lacks {', '.join(missing)}")
    if schema.get("additionalProperties") is False:
        unknown = sorted(set(value) - set(properties))
        if unknown:
            raise Invalid(f"{where} has unknown field(s) {', '.join(unknown)}; known: {', '.join(properties)}")
    for name, item in value.items():
        if name in properties:
            check(properties[name], item, name if where == "body" else f"{where}.{name}")


def _is(value, kind: str) -> bool:
    # JSON has no booleans among its numbers: true is not 1 here.
    if isinstance(value, bool) and kind in ("integer", "number"):
        return False
    return isinstance(value, _PYTHON_TYPES[kind])


def _describe(kind: str) -> str:
    return {"object": "an object", "array": "a list", "integer": "an integer", "null": "null"}.get(kind, f"a {kind}")
