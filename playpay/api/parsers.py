"""The API's one JSON parser: what PostgreSQL, JSON or our code cannot hold is refused at the door.

Refused with 400 problem+json, each naming the field by JSON pointer in `errors`: NaN and
Infinity (and numbers too large for a float), the NUL character and lone UTF-16 surrogates in
any string or key (PostgreSQL's JSONB refuses both), and nesting deeper than `MAX_JSON_DEPTH`.
Bodies larger than the request size limit never reach it (playpay.api.limits answers 413).
"""

import json
import math
from collections.abc import Mapping
from typing import Any

from rest_framework import exceptions
from rest_framework.parsers import JSONParser

from playpay.storable import MAX_JSON_DEPTH, escape_unstorable, has_unstorable_text

NON_FINITE = "Not a finite number (NaN and Infinity are not JSON)."
UNSTORABLE_TEXT = "Holds a NUL character or a lone UTF-16 surrogate."


class RequestTooLarge(exceptions.APIException):
    status_code = 413
    default_detail = "The body is larger than the request size limit."


class JsonTooDeep(exceptions.ParseError):
    default_detail = f"The JSON is nested deeper than {MAX_JSON_DEPTH} levels."


class UnacceptableJsonValue(exceptions.ParseError):
    """A value JSON allows (or Python's JSON reader lets through) that the API does not accept."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        super().__init__("A value in the body is not accepted; see `errors`.")
        self.errors = errors


def json_pointer(path: tuple[str | int, ...]) -> str:
    """RFC 6901, with unstorable characters of keys written as `\\uXXXX` text (the pointer is echoed)."""
    return "#" + "".join("/" + escape_unstorable(str(part)).replace("~", "~0").replace("/", "~1") for part in path)


def json_value_errors(value: Any, path: tuple[str | int, ...] = ()) -> list[dict[str, str]]:
    """The non-finite numbers and unstorable strings (keys too) in a parsed JSON value, by pointer.

    Iterative, so any depth the parser produced is walked without recursion. The common case, a clean
    value, is settled by the C encoder alone (NaN refused; NUL escaped as `\\u0000`, surrogates kept).
    """
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False)
    except (ValueError, TypeError, RecursionError):
        pass
    else:
        if "\\u0000" not in text and not has_unstorable_text(text):
            return []
    errors: list[dict[str, str]] = []
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(value, path)]
    while stack:
        node, where = stack.pop()
        if isinstance(node, str):
            if has_unstorable_text(node):
                errors.append({"pointer": json_pointer(where), "detail": UNSTORABLE_TEXT})
        elif isinstance(node, float):
            if not math.isfinite(node):
                errors.append({"pointer": json_pointer(where), "detail": NON_FINITE})
        elif isinstance(node, Mapping):
            for key, item in node.items():
                if isinstance(key, str) and has_unstorable_text(key):
                    errors.append({"pointer": json_pointer(where), "detail": f"A key: {UNSTORABLE_TEXT}"})
                stack.append((item, (*where, key)))
        elif isinstance(node, list):
            stack.extend((item, (*where, index)) for index, item in enumerate(node))
    return sorted(errors, key=lambda error: error["pointer"])


def json_depth(value: Any) -> int:
    """How deep a parsed JSON value nests (a scalar is 0, `[]` and `{}` are 1)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, Mapping | list):
            deepest = max(deepest, depth + 1)
            stack.extend((item, depth + 1) for item in (node.values() if isinstance(node, Mapping) else node))
    return deepest


def load_json(raw: bytes, encoding: str = "utf-8") -> Any:
    """Parse a body, refusing what the module docstring lists (raises a ParseError subclass)."""
    try:
        text = raw.decode(encoding)
    except (UnicodeDecodeError, LookupError) as exc:
        raise exceptions.ParseError(f"The body is not valid {encoding}.") from exc
    try:
        value = json.loads(text)
    except RecursionError as exc:
        raise JsonTooDeep() from exc
    except ValueError as exc:
        raise exceptions.ParseError(f"JSON parse error - {exc}") from exc
    if json_depth(value) > MAX_JSON_DEPTH:
        raise JsonTooDeep()
    return value


class StrictJSONParser(JSONParser):
    """DRF's default parser (settings.REST_FRAMEWORK): `load_json`, then every value checked."""

    check_values = True

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Mapping[str, Any] | None = None) -> Any:
        encoding = (parser_context or {}).get("encoding") or "utf-8"
        value = load_json(stream.read() if stream is not None else b"", encoding)
        if self.check_values:
            errors = json_value_errors(value)
            if errors:
                raise UnacceptableJsonValue(errors)
        return value


class ItemwiseJSONParser(StrictJSONParser):
    """For batch endpoints that refuse bad items one by one (funnel events): depth is still bounded,
    values are left to the endpoint's per-item check (`json_value_errors`)."""

    check_values = False
