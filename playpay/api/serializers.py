"""Serializer helpers shared by the API's apps."""

from typing import Any

from rest_framework.fields import Field


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
