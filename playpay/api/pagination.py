"""The API's lists: `limit` and `offset` are integers in range, or the request is answered 400."""

from typing import Any

from rest_framework import serializers
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.request import Request

MAX_LIMIT = 1000
MAX_OFFSET = 1_000_000_000


def _bounded_int(request: Request, name: str, *, default: int, lowest: int, highest: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    text = raw.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > len(str(highest)) or not lowest <= int(text) <= highest:
        raise serializers.ValidationError({name: [f"An integer from {lowest} to {highest}."]})
    return int(text)


class StrictLimitOffsetPagination(LimitOffsetPagination):
    """Limit-offset pagination whose parameters are checked (not ignored when malformed, as DRF's are)."""

    max_limit = MAX_LIMIT

    def get_limit(self, request: Request) -> int:
        return _bounded_int(
            request, self.limit_query_param, default=self.default_limit or 100, lowest=1, highest=MAX_LIMIT
        )

    def get_offset(self, request: Request) -> int:
        return _bounded_int(request, self.offset_query_param, default=0, lowest=0, highest=MAX_OFFSET)

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        parameters: list[dict[str, Any]] = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            bounds = (1, MAX_LIMIT) if parameter["name"] == self.limit_query_param else (0, MAX_OFFSET)
            parameter["schema"] = {**parameter["schema"], "minimum": bounds[0], "maximum": bounds[1]}
            rule = f"An integer from {bounds[0]} to {bounds[1]}; anything else is answered 400."
            parameter["description"] = f"{parameter.get('description', '')} {rule}".strip()
        return parameters
