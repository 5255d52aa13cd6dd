"""The registry of sources a dataset may read: what staff can expose, by name, with its fields.

A SQL source maps a name to a model's queryset and the fields (ORM expressions) that may be
filtered, grouped and aggregated; a journal source maps a name to a journal record kind and
the document paths of its fields. Staff build datasets from these names in the admin, so a
field name is always checked against its source and no query text ever comes from a form.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ValidationError
from django.db.models import (
    BooleanField,
    Case,
    CharField,
    Exists,
    F,
    FilteredRelation,
    IntegerField,
    Model,
    OuterRef,
    Q,
    QuerySet,
    Value,
    When,
)
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Cast, Concat

from carriers.selectors import CARRIER_CALL_FIELDS
from funnel.models import FunnelRollup
from journal.services import Kind
from journal.store import DocumentField
from payments.models import LedgerLine, Payment, PaymentStatus, Refund, Reversal
from reporting.models import SubscriberDayCount
from subscriptions.models import Subscription, SubscriptionCharge, SubscriptionStatus, SubscriptionStatusChange
from subscriptions.services.state_machine import BILLED_STATUSES, FINAL_STATUSES

if TYPE_CHECKING:
    from reporting.models import Dataset, DatasetField

# Payments whose charge went through (whatever happened to them afterwards) and those that ended without.
CHARGED = [
    PaymentStatus.SUCCEEDED,
    PaymentStatus.PARTIALLY_REFUNDED,
    PaymentStatus.REFUNDED,
    PaymentStatus.REVERSED,
]
NOT_CHARGED = [PaymentStatus.FAILED, PaymentStatus.EXPIRED]


def _flag(*where: Q | Exists, **condition: Any) -> Case:
    """1 where the condition holds, else 0: summed it counts, averaged it is a share."""
    return Case(When(Q(*where, **condition), then=Value(1)), default=Value(0), output_field=IntegerField())


@dataclass(frozen=True)
class SqlSource:
    description: str
    model: type[Model]
    time_fields: dict[str, str]  # name -> lookup
    fields: dict[str, Callable[[], Any]]  # name -> factory of the ORM expression
    # Relations the fields read, joined on more than the foreign key (a payment by its month too).
    relations: Callable[[], dict[str, FilteredRelation]] = dict

    def queryset(self) -> QuerySet[Any]:
        queryset: QuerySet[Any] = self.model._default_manager.alias(**self.relations())
        return queryset


def _payment_dimensions(prefix: str) -> dict[str, Callable[[], Any]]:
    return {
        "app": lambda: F(f"{prefix}app__name"),
        "carrier": lambda: F(f"{prefix}carrier__slug"),
        "country": lambda: F(f"{prefix}carrier__country_id"),
        "price_point": lambda: F(f"{prefix}price_point__code"),
        "flow": lambda: F(f"{prefix}flow"),
    }


def _subscription_dimensions(prefix: str) -> dict[str, Callable[[], Any]]:
    return {
        "app": lambda: F(f"{prefix}app__name"),
        "carrier": lambda: F(f"{prefix}carrier__slug"),
        "country": lambda: F(f"{prefix}carrier__country_id"),
        "plan": lambda: F(f"{prefix}plan__code"),
        "plan_period": lambda: F(f"{prefix}plan__period"),
    }


def _charge_payment() -> dict[str, FilteredRelation]:
    """A charge's payment, joined on its id and its month: PostgreSQL reads one month's partition per charge."""
    return {"charged": FilteredRelation("payment", condition=Q(payment__created_at=F("payment_created_at")))}


SUCCEEDED_CHARGE = SubscriptionCharge.Outcome.SUCCEEDED
FAILED_CHARGE = SubscriptionCharge.Outcome.FAILED


def _player() -> Concat:
    """A player: the app's user_ref within its app ("app id:user_ref"), as two apps may both have a player-1."""
    return Concat(Cast("app_id", CharField()), Value(":"), F("user_ref"), output_field=CharField())


# A subscription a player had and lost: it left a billed status for a final one (an opt-in never completed is
# not a subscriber lost).
CHURN = Q(from_status__in=BILLED_STATUSES, to_status__in=FINAL_STATUSES)
ACTIVATION = Q(from_status=SubscriptionStatus.PENDING_OPT_IN, to_status=SubscriptionStatus.ACTIVE)

MAX_FUNNEL_STEPS = 10


def _funnel_step(index: int) -> Callable[[], Any]:
    return lambda: Cast(KeyTextTransform(str(index), "reached"), IntegerField())


SQL_SOURCES: dict[str, SqlSource] = {
    "payments": SqlSource(
        description="Payments, one row each, at the time they were created.",
        model=Payment,
        time_fields={"created_at": "created_at", "updated_at": "updated_at"},
        fields={
            **_payment_dimensions(""),
            "currency": lambda: F("currency"),
            "status": lambda: F("status"),
            "failure_code": lambda: F("failure_code"),
            "player": _player,
            "amount_minor": lambda: F("amount_minor"),
            "refunded_minor": lambda: F("refunded_minor"),
            # The amount of a payment whose charge went through; empty for the others.
            "charged_amount_minor": lambda: Case(
                When(status__in=CHARGED, then=F("amount_minor")), default=None, output_field=IntegerField()
            ),
            "charged": lambda: _flag(status__in=CHARGED),
            "failed": lambda: _flag(status__in=NOT_CHARGED),
            # 1 charged, 0 failed or expired, empty while undecided: its average is the success rate.
            "charge_succeeded": lambda: Case(
                When(status__in=CHARGED, then=Value(1)),
                When(status__in=NOT_CHARGED, then=Value(0)),
                default=None,
                output_field=IntegerField(),
            ),
        },
    ),
    "refunds": SqlSource(
        description="Refunds (partial or total) requested by apps or staff.",
        model=Refund,
        time_fields={"created_at": "created_at", "completed_at": "completed_at"},
        fields={
            **_payment_dimensions("payment__"),
            "currency": lambda: F("currency"),
            "status": lambda: F("status"),
            "via_carrier": lambda: Cast(F("via_carrier"), BooleanField()),
            "amount_minor": lambda: F("amount_minor"),
            "succeeded": lambda: _flag(status="succeeded"),
        },
    ),
    "reversals": SqlSource(
        description="Reversals of whole charges.",
        model=Reversal,
        time_fields={"created_at": "created_at", "completed_at": "completed_at"},
        fields={
            **_payment_dimensions("payment__"),
            "currency": lambda: F("payment__currency"),
            "status": lambda: F("status"),
            "amount_minor": lambda: F("payment__amount_minor"),
        },
    ),
    "ledger_lines": SqlSource(
        description="Double-entry ledger lines (debit positive, credit negative).",
        model=LedgerLine,
        time_fields={"created_at": "entry__created_at"},
        fields={
            **{name: make for name, make in _payment_dimensions("entry__payment__").items() if name != "flow"},
            "account": lambda: F("account"),
            "entry_kind": lambda: F("entry__kind"),
            "currency": lambda: F("currency"),
            "amount_minor": lambda: F("amount_minor"),
        },
    ),
    "subscriptions": SqlSource(
        description="Subscriptions, one row each, at the time they were opened (activated_at: their first period).",
        model=Subscription,
        time_fields={"created_at": "created_at", "activated_at": "anchor_at"},
        fields={
            **_subscription_dimensions(""),
            "status": lambda: F("status"),
            "player": _player,
            "subscription": lambda: F("id"),
            "period_index": lambda: F("period_index"),
        },
    ),
    "subscriber_days": SqlSource(
        description="The subscriptions standing in each status at the start of each UTC day (its midnight), as the "
        "fold of the subscriber counts wrote them (PostgreSQL; none on SQLite).",
        model=SubscriberDayCount,
        time_fields={"day": "day"},
        fields={
            **_subscription_dimensions(""),
            "status": lambda: F("status"),
            "subscriptions": lambda: F("subscriptions"),
        },
    ),
    "subscription_changes": SqlSource(
        description="Status changes of subscriptions (their history), at the time they happened.",
        model=SubscriptionStatusChange,
        time_fields={"created_at": "created_at"},
        fields={
            **_subscription_dimensions("subscription__"),
            "from_status": lambda: F("from_status"),
            "to_status": lambda: F("to_status"),
            "subscription": lambda: F("subscription_id"),
            # 1 where a subscription became active by its opt-in (a new subscriber), else 0.
            "activated": lambda: _flag(ACTIVATION),
            # 1 where a subscription that was billed ended (cancelled or expired), else 0.
            "churned": lambda: _flag(CHURN),
            "cancelled": lambda: _flag(CHURN & Q(to_status=SubscriptionStatus.CANCELLED)),
            "expired": lambda: _flag(CHURN & Q(to_status=SubscriptionStatus.EXPIRED)),
        },
    ),
    "subscription_charges": SqlSource(
        description="Charges of subscriptions (opt-ins and renewals, every attempt), at the time they were made; "
        "and the periods missed (outcome missed, no payment: they ended before they could be charged).",
        model=SubscriptionCharge,
        time_fields={"created_at": "created_at", "settled_at": "settled_at", "period_start": "period_start"},
        relations=_charge_payment,
        fields={
            **_subscription_dimensions("subscription__"),
            "kind": lambda: F("kind"),
            "outcome": lambda: F("outcome"),
            "failure_code": lambda: F("failure_code"),
            "currency": lambda: F("charged__currency"),
            "subscription": lambda: F("subscription_id"),
            "period_index": lambda: F("period_index"),
            "attempt": lambda: F("attempt"),
            # The amount of a charge that went through; empty for the others.
            "charged_amount_minor": lambda: Case(
                When(outcome=SUCCEEDED_CHARGE, then=F("charged__amount_minor")),
                default=None,
                output_field=IntegerField(),
            ),
            # The subscription of a charge that went through: its distinct count is the paying subscribers.
            "charged_subscription": lambda: Case(
                When(outcome=SUCCEEDED_CHARGE, then=F("subscription_id")), default=None, output_field=IntegerField()
            ),
            # 1 on a period's first attempt once it is decided, and once any attempt at the period succeeded: summed
            # over the charges of a period of time, the periods first tried then that were decided and renewed,
            # each period once and in one place whatever the period of time (the rollups keep these sums).
            "period_decided": lambda: _flag(attempt=1, outcome__in=(SUCCEEDED_CHARGE, FAILED_CHARGE)),
            "period_renewed": lambda: _flag(
                Exists(
                    SubscriptionCharge.objects.filter(
                        subscription=OuterRef("subscription"),
                        period_index=OuterRef("period_index"),
                        outcome=SUCCEEDED_CHARGE,
                    )
                ),
                attempt=1,
            ),
            "succeeded": lambda: _flag(outcome=SUCCEEDED_CHARGE),
            "failed": lambda: _flag(outcome=FAILED_CHARGE),
            # 1 succeeded, 0 failed, empty while pending: its average is the success rate of the attempts.
            "charge_succeeded": lambda: Case(
                When(outcome=SUCCEEDED_CHARGE, then=Value(1)),
                When(outcome=FAILED_CHARGE, then=Value(0)),
                default=None,
                output_field=IntegerField(),
            ),
        },
    ),
    "funnel_rollups": SqlSource(
        description="Hourly funnel rollups: journeys that reached each step, by funnel and breakdown.",
        model=FunnelRollup,
        time_fields={"hour": "hour"},
        fields={
            "funnel": lambda: F("funnel__name"),
            "app": lambda: F("app__name"),
            "carrier": lambda: F("carrier"),
            "country": lambda: F("country"),
            "price_point": lambda: F("price_point"),
            "flow": lambda: F("flow"),
            "excluded": lambda: F("excluded"),
            **{f"step_{index + 1}": _funnel_step(index) for index in range(MAX_FUNNEL_STEPS)},
        },
    ),
}


@dataclass(frozen=True)
class JournalSource:
    description: str
    kind: str  # the journal records it reads
    fields: dict[str, DocumentField] = field(default_factory=dict)
    time_fields: tuple[str, ...] = ("occurred_at",)


JOURNAL_SOURCES: dict[str, JournalSource] = {
    "carrier_calls": JournalSource(
        description="Every call PlayPay made to a carrier: operation, outcome, error code, latency.",
        kind=Kind.CARRIER_CALL,
        fields=CARRIER_CALL_FIELDS,
    ),
    "api_requests": JournalSource(
        description="Inbound API requests of the apps.",
        kind=Kind.API_REQUEST,
        fields={
            "app": DocumentField("correlation.app"),
            "method": DocumentField("data.method"),
            "path": DocumentField("data.path"),
            "status": DocumentField("data.status"),
            "duration_ms": DocumentField("data.duration_ms", cast="int"),
        },
    ),
}


def _registered_source(dataset: "Dataset") -> Any:
    """The registered source a SQL or journal dataset reads (None if unknown); API datasets have none."""
    registry: Mapping[str, Any] = SQL_SOURCES if dataset.source_kind == "sql" else JOURNAL_SOURCES
    return registry.get(dataset.source)


def source_field_names(dataset: "Dataset") -> list[str] | None:
    """The fields the dataset's source offers; None for API datasets (their payload decides)."""
    if dataset.source_kind not in ("sql", "journal"):
        return None
    source = _registered_source(dataset)
    return list(source.fields) if source is not None else []


def time_field_names(dataset: "Dataset") -> list[str] | None:
    if dataset.source_kind not in ("sql", "journal"):
        return None
    source = _registered_source(dataset)
    return list(source.time_fields) if source is not None else []


def validate_dataset_source(dataset: "Dataset") -> None:
    errors: dict[str, str] = {}
    if dataset.source_kind in ("sql", "journal"):
        registry = SQL_SOURCES if dataset.source_kind == "sql" else JOURNAL_SOURCES
        if dataset.source not in registry:
            errors["source"] = f"Choose one of the registered {dataset.source_kind} sources: {', '.join(registry)}."
        else:
            times = time_field_names(dataset) or []
            if dataset.time_field and dataset.time_field not in times:
                errors["time_field"] = f"The time fields of {dataset.source} are: {', '.join(times)}."
    elif dataset.source_kind == "api":
        if not dataset.api_url:
            errors["api_url"] = "An API dataset needs the URL of its JSON endpoint."
        if dataset.source:
            errors["source"] = "API datasets have no registered source: leave it empty."
    if errors:
        raise ValidationError(errors)


def validate_dataset_field(dataset: "Dataset", dataset_field: "DatasetField") -> None:
    errors: dict[str, str] = {}
    offered = source_field_names(dataset)
    source = dataset_field.source_name
    if offered is not None and source and source not in offered:
        errors["source" if dataset_field.source else "name"] = (
            f"{source!r} is not a field of {dataset.source}; its fields are: {', '.join(offered)}."
        )
    is_measure = dataset_field.role == "measure"
    if is_measure and not dataset_field.aggregation:
        errors["aggregation"] = "A measure needs an aggregation."
    if not is_measure and dataset_field.aggregation:
        errors["aggregation"] = "Only measures are aggregated."
    if is_measure and not source and dataset_field.aggregation != "count":
        errors["source"] = "Only a count can do without a source field."
    if errors:
        raise ValidationError(errors)
