import json
from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from carriers.models import Carrier, PricePoint
from payments.models import Payment, PaymentFlow, Refund, Reversal
from payments.services.payments import next_action
from playpay.api.serializers import (
    MAX_METADATA_BYTES,
    JsonIntegerField,
    SharedFieldsMixin,
    SharedInputFieldsMixin,
    StrictSerializer,
)


@extend_schema_field(
    {
        "type": "string",
        "format": "msisdn",
        "minLength": 1,
        "maxLength": 32,
        "example": "+447400123456",
        "description": "The player's mobile number, international format (`+` or `00` and the country code, "
        "or the country code first); a number that is not a valid mobile number is answered 400 "
        "`invalid_msisdn`.",
    }
)
class MsisdnField(serializers.CharField):
    pass


class JourneyIdField(serializers.CharField):
    """The app's funnel journey the request belongs to (docs/funnel.md): optional, up to 128 characters."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("max_length", 128)
        kwargs.setdefault("required", False)
        kwargs.setdefault("default", "")
        kwargs.setdefault("help_text", "Your funnel journey id: the platform records its steps in that journey.")
        super().__init__(**kwargs)


class PaymentCreateSerializer(SharedInputFieldsMixin, StrictSerializer):
    """A payment to create: who pays, from which number, for what."""

    user_ref = serializers.CharField(max_length=128, help_text="Your id of the player.")
    msisdn = MsisdnField(max_length=32)
    price_point = serializers.SlugField(max_length=64, help_text="Code of one of the carrier's price points.")
    carrier = serializers.SlugField(
        max_length=80, required=False, help_text="Carrier slug; resolved from the number when omitted."
    )
    flow = serializers.ChoiceField(
        choices=PaymentFlow.choices, required=False, help_text="Default: PIN where the carrier offers it."
    )
    journey_id = JourneyIdField()
    metadata = serializers.DictField(required=False, default=dict, help_text="Up to 4 KB of your own JSON.")

    def validate_metadata(self, value: dict[str, Any]) -> dict[str, Any]:
        if len(json.dumps(value)) > MAX_METADATA_BYTES:
            raise serializers.ValidationError(f"At most {MAX_METADATA_BYTES} bytes of JSON.")
        return value


class PaymentConfirmSerializer(SharedInputFieldsMixin, StrictSerializer):
    """The PIN the player received, for a PIN payment."""

    pin = serializers.RegexField(r"^\d{4,8}$", help_text="The PIN the player received by SMS (4 to 8 digits).")


class NextActionSerializer(SharedFieldsMixin, serializers.Serializer[Any]):
    """What the player or the game does next with the payment."""

    type = serializers.ChoiceField(choices=["enter_pin", "wait", "none"])
    expires_at = serializers.DateTimeField(required=False)
    attempts_remaining = serializers.IntegerField(required=False)
    poll_after_seconds = serializers.IntegerField(required=False)
    pin_error = serializers.ChoiceField(
        choices=["invalid_pin", "carrier_unavailable"],
        required=False,
        help_text="With `enter_pin`: why the PIN submitted last was not accepted (a wrong PIN, or the carrier "
        "could not check it); the player may submit one again.",
    )
    retry_after_seconds = serializers.IntegerField(
        required=False,
        help_text="With `enter_pin` and `pin_error: carrier_unavailable`: the carrier (or its circuit breaker or "
        "rate limit) asked for this wait, in seconds; submit the PIN again after it, not sooner.",
    )


class FailureSerializer(serializers.Serializer[Any]):
    code = serializers.CharField()
    message = serializers.CharField()


class PaymentSerializer(SharedFieldsMixin, serializers.ModelSerializer[Payment]):
    """A payment as the API shows it."""

    id = serializers.UUIDField(source="public_id", read_only=True)
    carrier: serializers.SlugRelatedField[Carrier] = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    price_point: serializers.SlugRelatedField[PricePoint] = serializers.SlugRelatedField(
        slug_field="code", read_only=True
    )
    failure = serializers.SerializerMethodField()
    next_action = serializers.SerializerMethodField()

    class Meta:
        model = Payment
        fields = [
            "id",
            "status",
            "flow",
            "amount_minor",
            "currency",
            "carrier",
            "price_point",
            "user_ref",
            "msisdn",
            "journey_id",
            "metadata",
            "failure",
            "next_action",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields

    @extend_schema_field(FailureSerializer(allow_null=True))
    def get_failure(self, payment: Payment) -> dict[str, str] | None:
        return _failure(payment.failure_code, payment.failure_message)

    @extend_schema_field(NextActionSerializer)
    def get_next_action(self, payment: Payment) -> dict[str, Any]:
        return dict(NextActionSerializer(next_action(payment)).data)


class PricePointSerializer(serializers.ModelSerializer[PricePoint]):
    carrier: serializers.SlugRelatedField[Carrier] = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    country = serializers.CharField(source="carrier.country_id", read_only=True)

    class Meta:
        model = PricePoint
        fields = ["code", "carrier", "country", "amount_minor", "currency", "tax_included"]
        read_only_fields = fields


class RefundCreateSerializer(SharedInputFieldsMixin, StrictSerializer):
    """A refund to make: all that is left to refund, or a part of it."""

    amount_minor = JsonIntegerField(
        min_value=1, required=False, help_text="Minor units; default: all that is left to refund."
    )
    reason = serializers.CharField(max_length=255, help_text="Why: shown to operations and finance.")


class ReversalCreateSerializer(StrictSerializer):
    reason = serializers.CharField(max_length=255, help_text="Why the charge must be undone.")


def _failure(code: str, message: str) -> dict[str, str] | None:
    return {"code": code, "message": message} if code else None


class RefundSerializer(serializers.ModelSerializer[Refund]):
    id = serializers.UUIDField(source="public_id", read_only=True)
    payment = serializers.UUIDField(source="payment.public_id", read_only=True)
    failure = serializers.SerializerMethodField()

    class Meta:
        model = Refund
        fields = [
            "id",
            "payment",
            "amount_minor",
            "currency",
            "status",
            "reason",
            "failure",
            "created_at",
            "completed_at",
        ]
        read_only_fields = fields

    @extend_schema_field(FailureSerializer(allow_null=True))
    def get_failure(self, refund: Refund) -> dict[str, str] | None:
        return _failure(refund.failure_code, refund.failure_message)


class ReversalSerializer(serializers.ModelSerializer[Reversal]):
    payment = serializers.UUIDField(source="payment.public_id", read_only=True)
    failure = serializers.SerializerMethodField()

    class Meta:
        model = Reversal
        fields = ["payment", "status", "reason", "failure", "created_at", "completed_at"]
        read_only_fields = fields

    @extend_schema_field(FailureSerializer(allow_null=True))
    def get_failure(self, reversal: Reversal) -> dict[str, str] | None:
        return _failure(reversal.failure_code, reversal.failure_message)
