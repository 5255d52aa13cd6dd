import json
from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from payments.api.serializers import JourneyIdField, MsisdnField, NextActionSerializer
from payments.services.payments import next_action
from playpay.api.serializers import MAX_METADATA_BYTES, StrictSerializer
from subscriptions.models import Subscription, SubscriptionStatus
from subscriptions.services.subscriptions import opt_in_payment


class SubscriptionCreateSerializer(StrictSerializer):
    user_ref = serializers.CharField(max_length=128, help_text="Your id of the player.")
    msisdn = MsisdnField(max_length=32)
    plan = serializers.SlugField(max_length=64, help_text="Code of one of your plans.")
    carrier = serializers.SlugField(
        max_length=80, required=False, help_text="Carrier slug; resolved from the number when omitted."
    )
    journey_id = JourneyIdField()
    metadata = serializers.DictField(required=False, default=dict, help_text="Up to 4 KB of your own JSON.")

    def validate_metadata(self, value: dict[str, Any]) -> dict[str, Any]:
        if len(json.dumps(value)) > MAX_METADATA_BYTES:
            raise serializers.ValidationError(f"At most {MAX_METADATA_BYTES} bytes of JSON.")
        return value


class SubscriptionConfirmSerializer(StrictSerializer):
    pin = serializers.RegexField(r"^\d{4,8}$", help_text="The PIN the player received by SMS (4 to 8 digits).")


class SubscriptionCancelSerializer(StrictSerializer):
    at_period_end = serializers.BooleanField(
        default=True,
        help_text="true (default): the player keeps access until the paid period ends, which is not renewed. "
        "false: the subscription ends now, and with it the player's access.",
    )
    reason = serializers.CharField(max_length=255, help_text="Why: shown to operations and sent in the webhook.")


class SubscriptionStopSerializer(StrictSerializer):
    msisdn = MsisdnField(max_length=32, help_text="The number the player sent STOP from.")
    plan = serializers.SlugField(
        max_length=64, required=False, help_text="Code of one of your plans: only its subscriptions. Omitted: all."
    )

    def to_internal_value(self, data: Any) -> Any:
        # Strings only: DRF's text fields would read a number (`"plan": 0`) as its digits.
        if isinstance(data, dict):
            wrong = {
                name: ["Must be a string."]
                for name in ("msisdn", "plan")
                if name in data and not isinstance(data[name], str)
            }
            if wrong:
                raise serializers.ValidationError(wrong)
        return super().to_internal_value(data)


class PeriodSerializer(serializers.Serializer[Any]):
    index = serializers.IntegerField(help_text="0 for the first period.")
    start = serializers.DateTimeField()
    end = serializers.DateTimeField()


class PriceSerializer(serializers.Serializer[Any]):
    amount_minor = serializers.IntegerField()
    currency = serializers.CharField()


class SubscriptionSerializer(serializers.ModelSerializer[Subscription]):
    id = serializers.UUIDField(source="public_id", read_only=True)
    plan = serializers.CharField(source="plan.code", read_only=True)
    period = serializers.CharField(source="plan.period", read_only=True, help_text="daily, weekly or monthly.")
    carrier = serializers.CharField(source="carrier.slug", read_only=True)
    price = serializers.SerializerMethodField()
    current_period = serializers.SerializerMethodField()
    next_renewal_at = serializers.SerializerMethodField()
    opt_in_payment = serializers.SerializerMethodField()
    next_action = serializers.SerializerMethodField()

    class Meta:
        model = Subscription
        fields = [
            "id",
            "status",
            "plan",
            "period",
            "carrier",
            "user_ref",
            "msisdn",
            "price",
            "current_period",
            "entitled_until",
            "next_renewal_at",
            "cancel_at_period_end",
            "cancel_reason",
            "opt_in_payment",
            "next_action",
            "journey_id",
            "metadata",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields

    @extend_schema_field(PriceSerializer)
    def get_price(self, subscription: Subscription) -> dict[str, Any]:
        # The regular price agreed at opt-in: what every renewal charges.
        return {"amount_minor": subscription.amount_minor, "currency": subscription.currency}

    @extend_schema_field(PeriodSerializer(allow_null=True))
    def get_current_period(self, subscription: Subscription) -> dict[str, Any] | None:
        if subscription.current_period_start is None or subscription.current_period_end is None:
            return None
        return dict(
            PeriodSerializer(
                {
                    "index": subscription.period_index,
                    "start": subscription.current_period_start,
                    "end": subscription.current_period_end,
                }
            ).data
        )

    @extend_schema_field(serializers.DateTimeField(allow_null=True))
    def get_next_renewal_at(self, subscription: Subscription) -> Any:
        end = subscription.current_period_end
        if subscription.status != SubscriptionStatus.ACTIVE or subscription.cancel_at_period_end or end is None:
            return None
        return serializers.DateTimeField().to_representation(end)

    @extend_schema_field(serializers.UUIDField())
    def get_opt_in_payment(self, subscription: Subscription) -> str:
        return str(opt_in_payment(subscription).public_id)

    @extend_schema_field(NextActionSerializer)
    def get_next_action(self, subscription: Subscription) -> dict[str, Any]:
        if subscription.status != SubscriptionStatus.PENDING_OPT_IN:
            return {"type": "none"}
        return dict(NextActionSerializer(next_action(opt_in_payment(subscription))).data)


class EntitlementSerializer(serializers.Serializer[Any]):
    user_ref = serializers.CharField()
    entitled = serializers.BooleanField(help_text="Whether the player is entitled now, by any of its subscriptions.")
    entitled_until = serializers.DateTimeField(allow_null=True, help_text="Until when (the latest of them).")
    subscriptions = SubscriptionSerializer(many=True, help_text="The subscriptions that entitle the player now.")


class SubscriptionStopResultSerializer(serializers.Serializer[Any]):
    cancelled = SubscriptionSerializer(many=True, help_text="The subscriptions this STOP cancelled (none: all ended).")
