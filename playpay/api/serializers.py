"""Serializer helpers shared by the API's apps."""

import inspect
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


class _SharedFields(BindingDict):
    """A class's fields, bound once: read only once built, since a change would reach every request."""

    built = False

    def __setitem__(self, key: str, field: Field[Any, Any, Any, Any]) -> None:
        if self.built:
            raise TypeError("these fields are shared by every request: copy them to change them")
        super().__setitem__(key, field)

    def __delitem__(self, key: str) -> None:
        raise TypeError("these fields are shared by every request: copy them to change them")


class SharedInputFieldsMixin:
    """For input serializers on hot paths: the declared fields built and bound once per class, instead of
    deep-copied into each serializer DRF makes (two thirds of validating a payment request).

    The fields belong to one context-free instance of the class, so this is only for top-level serializers of
    whole requests whose fields read nothing from the context or the instance: `partial`, a `context` and
    nesting are refused, and so is a field or validator that asks for the context. A field keeps nothing of
    the request it validates; each serializer's own `validate_<field>` methods run as always. List this mixin
    before the serializer class, whose own `fields` would otherwise win.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if inspect.getattr_static(cls, "fields") is not SharedInputFieldsMixin.__dict__["fields"]:
            raise TypeError(f"{cls.__name__}: list SharedInputFieldsMixin before the serializer class")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("partial") or kwargs.get("context"):
            raise TypeError(f"{type(self).__name__} shares its fields: no partial validation, no context")
        super().__init__(*args, **kwargs)

    def bind(self, field_name: str, parent: Any) -> None:
        raise TypeError(f"{type(self).__name__} shares its fields: it validates whole requests, not nested")

    @property
    def fields(self) -> BindingDict:
        cls = type(self)
        shared: _SharedFields | None = cls.__dict__.get("_shared_fields")
        if shared is None:
            prototype: Any = cls()
            shared = _SharedFields(prototype)
            for name, field in prototype.get_fields().items():
                if _asks_for_context(field):
                    raise TypeError(f"{cls.__name__}.{name} reads the context: its fields cannot be shared")
                shared[name] = field
            shared.built = True
            cls._shared_fields = shared  # type: ignore[attr-defined]
        return shared


def _asks_for_context(field: Field[Any, Any, Any, Any]) -> bool:
    default = getattr(field, "default", None)
    return any(getattr(part, "requires_context", False) for part in (default, *field.validators))
