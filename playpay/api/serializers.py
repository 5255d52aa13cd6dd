"""Serializer helpers shared by the API's apps."""

from collections.abc import Container, Mapping
from typing import Any

from rest_framework import serializers
from rest_framework.fields import Field
from rest_framework.utils.serializer_helpers import BindingDict

# Free JSON an app attaches (payment metadata, funnel event properties), at most this many bytes.
MAX_METADATA_BYTES = 4096
NOT_ACCEPTED = "This field is not accepted."


def unknown_field_errors(data: Mapping[str, Any], known: Container[str]) -> dict[str, list[str]]:
    """The error of each field in `data` that is not `known`, as a serializer reports errors."""
    return {name: [NOT_ACCEPTED] for name in sorted(name for name in data if name not in known)}


class StrictSerializer(serializers.Serializer[Any]):
    """Refuses fields it does not declare, so nothing undocumented is ever accepted."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = unknown_field_errors(data, self.fields)
            if unknown:
                raise serializers.ValidationError(unknown)
        return super().to_internal_value(data)


class JsonIntegerField(serializers.IntegerField):
    """An integer given as a JSON integer: `"100"`, `100.0` and `1e2` are refused, not read as 100.
    For money (`amount_minor`), where a client's mistake must not turn into a charge or a refund."""

    default_error_messages = {"invalid": "A JSON integer is required (not a string, a decimal or an exponent)."}

    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return int(super().to_internal_value(data))


class SharedFieldsMixin:
    """For output-only serializers on hot paths: fields are built once per class, not per object.

    DRF deep-copies every declared field into each serializer instance it makes; rendering
    a payment costs less than that copying. The shared fields belong to one context-free
    instance of the class, so this is only for serializers whose fields read nothing from
    the context or the serializer's own state (no hyperlinks, no request).
    """

    @property
    def _readable_fields(self) -> list[Field[Any, Any, Any, Any]]:
        cls = type(self)
        shared: list[Field[Any, Any, Any, Any]] | None = cls.__dict__.get("_shared_readable_fields")
        if shared is None:
            prototype: Any = cls()
            shared = [field for field in prototype.fields.values() if not field.write_only]
            cls._shared_readable_fields = shared  # type: ignore[attr-defined]
        return shared


class SharedInputFieldsMixin:
    """For input serializers on hot paths: the declared fields built and bound once per class, instead of
    deep-copied into each serializer DRF makes (two thirds of validating a payment request).

    The fields belong to one context-free instance of the class, so this is only for serializers whose fields
    read nothing from the context or the instance, and never partial (refused); a field keeps nothing of the
    request it validates, and each serializer's own `validate_<field>` methods run as always.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("partial"):
            raise TypeError(f"{type(self).__name__} shares its fields: it validates whole requests only")
        super().__init__(*args, **kwargs)

    @property
    def fields(self) -> BindingDict:
        cls = type(self)
        shared: BindingDict | None = cls.__dict__.get("_shared_fields")
        if shared is None:
            prototype: Any = cls()
            shared = BindingDict(prototype)
            for name, field in prototype.get_fields().items():
                shared[name] = field
            cls._shared_fields = shared  # type: ignore[attr-defined]
        return shared
