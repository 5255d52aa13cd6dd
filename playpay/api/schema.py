"""How the OpenAPI schema (drf-spectacular) states what the server enforces.

- `StrictAutoSchema`: a request body of a `StrictSerializer` has `additionalProperties: false`, since
  the server refuses fields it does not declare.
- `document_problems` (a postprocessing hook): every error response is `application/problem+json`
  with the `Problem` body; an operation its security requirement says is authenticated (the API key
  scheme, tenants.auth) can answer 401 and 429; every operation can answer 406 (an `Accept` without
  JSON) and 503 (the database does not answer); a request body is required wherever there is one.
- `TEXT_PATTERN`: a request's text field holds a character that is not a space, and no NUL.
"""

from typing import Any

from drf_spectacular.openapi import AutoSchema
from rest_framework import serializers

from playpay.api.problems import PROBLEM_CONTENT_TYPE
from playpay.api.serializers import StrictSerializer

PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}

# Statuses every operation of a kind can answer, and what they mean there.
AUTHENTICATED_PROBLEMS = {
    "401": "`not_authenticated` (no `Authorization` header) or `authentication_failed` (the key is not valid "
    "or has been revoked).",
    "429": "`rate_limited`: over the app's requests per minute; retry after `Retry-After` seconds.",
}
ANY_PROBLEMS = {
    "406": "`not_acceptable`: the `Accept` header allows no JSON.",
    "503": "`database_unavailable`: the database did not answer in time; retry after `Retry-After` seconds.",
}


# What a text field of a request holds: not only spaces (they are trimmed, then refused as blank), and no
# NUL character (playpay.api.parsers refuses it).
TEXT_PATTERN = r"^[^\x00]*[^\s\x00][^\x00]*$"


class StrictAutoSchema(AutoSchema):
    def _map_serializer_field(self, field: Any, direction: str, bypass_extensions: bool = False) -> dict[str, Any]:
        schema: dict[str, Any] = super()._map_serializer_field(field, direction, bypass_extensions)  # type: ignore[no-untyped-call]
        if (
            direction == "request"
            and type(field) is serializers.CharField
            and field.trim_whitespace
            and not field.allow_blank
            and "pattern" not in schema
            and "format" not in schema
        ):
            schema["pattern"] = TEXT_PATTERN
        return schema

    def _map_basic_serializer(self, serializer: Any, direction: str) -> dict[str, Any]:
        schema: dict[str, Any] = super()._map_basic_serializer(serializer, direction)  # type: ignore[no-untyped-call]
        if direction == "request" and isinstance(serializer, StrictSerializer):
            schema["additionalProperties"] = False
        return schema


def _problem_content() -> dict[str, Any]:
    return {PROBLEM_CONTENT_TYPE: {"schema": PROBLEM_REF}}


def document_problems(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    for operations in result.get("paths", {}).values():
        for operation in operations.values():
            responses: dict[str, Any] = operation.setdefault("responses", {})
            authenticated = any(requirement for requirement in operation.get("security", []))
            extra = {**(AUTHENTICATED_PROBLEMS if authenticated else {}), **ANY_PROBLEMS}
            for code, description in extra.items():
                responses.setdefault(code, {"description": description})
            if "requestBody" in operation:  # every body the API reads has required fields
                operation["requestBody"]["required"] = True
            for code, response in responses.items():
                if int(code) >= 400:
                    response["content"] = _problem_content()
    return result
