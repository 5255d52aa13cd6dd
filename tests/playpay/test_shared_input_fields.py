"""Input serializers that share their fields (SharedInputFieldsMixin) validate as DRF's own per-request fields do."""

import copy
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from payments.api.serializers import PaymentConfirmSerializer, PaymentCreateSerializer, RefundCreateSerializer
from playpay.api.serializers import StrictSerializer

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
    """The same serializer as DRF makes it: its declared fields deep-copied into each instance."""
    methods = {name: value for name, value in vars(shared).items() if name.startswith("validate_")}
    return type(f"Own{shared.__name__}", (StrictSerializer,), {**copy.deepcopy(shared._declared_fields), **methods})


def _outcome(serializer_class: type[Any], data: dict[str, Any]) -> tuple[bool, Any]:
    serializer = serializer_class(data=data)
    valid = serializer.is_valid()
    return valid, dict(serializer.validated_data) if valid else serializer.errors


@pytest.mark.parametrize(("shared", "data"), REQUESTS)
def test_a_serializer_sharing_its_fields_validates_as_one_with_its_own(shared: type[Any], data: dict[str, Any]) -> None:
    assert _outcome(shared, data) == _outcome(_with_own_fields(shared), data)
    assert shared(data=data).fields is shared(data={}).fields  # built once for the class


def test_requests_validated_at_once_each_get_their_own_answer() -> None:
    def validate(n: int) -> tuple[int, Any]:
        body = {"user_ref": f"p{n}", "msisdn": "+447400123456", "price_point": "gems-100"}
        if n % 3 == 0:
            body["flow"] = "teleport"  # refused: its errors must stay its own
        return n, _outcome(PaymentCreateSerializer, body)

    with ThreadPoolExecutor(max_workers=8) as pool:
        for n, (valid, outcome) in pool.map(validate, range(400)):
            assert valid is (n % 3 != 0)
            assert (set(outcome) == {"flow"}) if n % 3 == 0 else (outcome["user_ref"] == f"p{n}")


def test_a_serializer_sharing_its_fields_refuses_partial_validation() -> None:
    with pytest.raises(TypeError, match="whole requests only"):
        PaymentCreateSerializer(data={}, partial=True)
