"""Input serializers that share their fields (SharedInputFieldsMixin) validate as DRF's own per-request fields do."""

import copy
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from rest_framework import serializers

from payments.api.serializers import PaymentConfirmSerializer, PaymentCreateSerializer, RefundCreateSerializer
from playpay.api.serializers import SharedInputFieldsMixin, StrictSerializer

REQUESTS: list[tuple[type[Any], dict[str, Any]]] = [
    (PaymentCreateSerializer, {"user_ref": "p1", "msisdn": "+447400123456", "price_point": "gems-100"}),
    (
        PaymentCreateSerializer,
        {"user_ref": "p1", "msisdn": "+447400123456", "price_point": "gems-100", "flow": "pin", "metadata": {"a": 1}},
    ),
    (PaymentCreateSerializer, {"user_ref": "", "msisdn": "+44", "unknown": 1}),
    (PaymentCreateSerializer, {"user_ref": "p1", "msisdn": "x", "price_point": "a b", "flow": "teleport"}),
    (PaymentCreateSerializer, {"user_ref": "p", "msisdn": "1", "price_point": "p", "metadata": {"a": "x" * 5000}}),
    (PaymentCreateSerializer, {}),
    (PaymentConfirmSerializer, {"pin": "1234"}),
    (PaymentConfirmSerializer, {"pin": "12a"}),
    (RefundCreateSerializer, {"reason": "asked", "amount_minor": 100}),
    (RefundCreateSerializer, {"reason": "", "amount_minor": "100"}),
]


def _with_own_fields(shared: type[Any]) -> type[Any]:
    """The same class as DRF makes it without the mixin: its declared fields deep-copied into each instance,
    its own methods and its other bases as they are."""
    namespace = {
        name: value
        for name, value in vars(shared).items()
        if name not in ("__dict__", "__weakref__", "_declared_fields", "_shared_fields")
    }
    bases = tuple(base for base in shared.__bases__ if base is not SharedInputFieldsMixin)
    return type(f"Own{shared.__name__}", bases, {**namespace, **copy.deepcopy(shared._declared_fields)})


def _outcome(serializer_class: type[Any], data: dict[str, Any]) -> tuple[bool, Any]:
    serializer = serializer_class(data=data)
    valid = serializer.is_valid()
    return valid, dict(serializer.validated_data) if valid else serializer.errors


@pytest.mark.parametrize(("shared", "data"), REQUESTS)
def test_a_serializer_sharing_its_fields_validates_as_one_with_its_own(shared: type[Any], data: dict[str, Any]) -> None:
    assert _outcome(shared, data) == _outcome(_with_own_fields(shared), data)
    assert shared(data=data).fields is shared(data={}).fields  # built once for the class


def test_requests_validated_at_once_each_get_their_own_answer() -> None:
    own = _with_own_fields(PaymentCreateSerializer)

    def body(n: int) -> dict[str, Any]:
        flow = {"flow": "teleport"} if n % 3 == 0 else {}  # refused: its errors must stay its own
        return {"user_ref": f"p{n}", "msisdn": "+447400123456", "price_point": "gems-100", **flow}

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(lambda n: _outcome(PaymentCreateSerializer, body(n)), range(400)))
    assert outcomes == [_outcome(own, body(n)) for n in range(400)]


@pytest.mark.parametrize(
    "kwargs",
    [{"partial": True}, {"context": {"request": None}}, {"many": True}],
    ids=["partial", "context", "many"],
)
def test_a_serializer_sharing_its_fields_refuses_what_its_fields_cannot_follow(kwargs: dict[str, Any]) -> None:
    with pytest.raises(TypeError, match="shares its fields"):
        PaymentCreateSerializer(data={}, **kwargs)


def test_the_shared_fields_cannot_be_changed() -> None:
    fields = PaymentCreateSerializer(data={}).fields
    with pytest.raises(TypeError, match="shared by every request"):
        fields.pop("carrier")
    with pytest.raises(TypeError, match="shared by every request"):
        fields["carrier"] = serializers.CharField()
    assert "carrier" in PaymentCreateSerializer(data={}).fields


def test_a_field_that_reads_the_context_cannot_be_shared() -> None:
    class Stamped(SharedInputFieldsMixin, StrictSerializer):
        user = serializers.HiddenField(default=serializers.CurrentUserDefault())

    with pytest.raises(TypeError, match="reads the context"):
        Stamped(data={}).is_valid()


def test_the_mixin_listed_after_the_serializer_class_is_refused() -> None:
    with pytest.raises(TypeError, match="before the serializer class"):
        type("Late", (StrictSerializer, SharedInputFieldsMixin), {})
