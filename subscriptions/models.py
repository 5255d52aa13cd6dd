from typing import Any

from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import F, Q
from simple_history.models import HistoricalRecords

from carriers.errors import ErrorCode
from carriers.models import Carrier, PricePoint, Protocol
from playpay.ids import new_public_id
from playpay.money import format_money
from subscriptions.periods import Period


class SubscriptionStatus(models.TextChoices):
    PENDING_OPT_IN = "pending_opt_in"
    ACTIVE = "active"
    PAST_DUE = "past_due"
    SUSPENDED = "suspended"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


class Plan(models.Model):
    """What an app sells by subscription: a period and, per carrier, the price points charged each period.

    Where a plan is offered is where it has an offer (`PlanOffer`): one per carrier, so per country too.
    """

    app = models.ForeignKey("tenants.App", on_delete=models.PROTECT, related_name="plans")
    code = models.SlugField(max_length=64, help_text="The app's code of the plan, e.g. vip-weekly.")
    name = models.CharField(max_length=100, help_text="Shown to the player in the opt-in message.")
    period = models.CharField(max_length=10, choices=Period.choices)
    trial_days = models.PositiveSmallIntegerField(
        default=0, help_text="Free days before the first charge (0: none). Needs the carrier's consent flow."
    )
    is_active = models.BooleanField(default=True, help_text="Inactive: no new subscriptions; existing ones renew.")
    created_at = models.DateTimeField(auto_now_add=True)
    history = HistoricalRecords()

    class Meta:
        ordering = ["app_id", "code"]
        constraints = [models.UniqueConstraint(fields=["app", "code"], name="plan_code_unique_per_app")]

    def __str__(self) -> str:
        return f"{self.code} ({self.period})"


class PlanOffer(models.Model):
    """A plan on one carrier: its price point each period, and optionally a discounted first period."""

    plan = models.ForeignKey(Plan, on_delete=models.CASCADE, related_name="offers")
    carrier = models.ForeignKey("carriers.Carrier", on_delete=models.PROTECT, related_name="plan_offers")
    price_point = models.ForeignKey("carriers.PricePoint", on_delete=models.PROTECT, related_name="+")
    first_period_price_point = models.ForeignKey(
        "carriers.PricePoint",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="Charged for the first period instead (a discount); empty: the regular price.",
    )
    fallback_price_point = models.ForeignKey(
        "carriers.PricePoint",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="Downgrade billing: a lower price tried instead of the regular one after a renewal was declined "
        "for insufficient funds, where the carrier allows it; empty: never.",
    )
    history = HistoricalRecords()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["plan", "carrier"], name="plan_offer_one_per_carrier")]

    def __str__(self) -> str:
        return f"{self.plan.code} on {self.carrier}"

    def clean(self) -> None:
        # The prices charged are the carrier's own: a price point of another carrier would be charged there.
        regular = self.price_point if self.price_point_id else None
        first = self.first_period_price_point if self.first_period_price_point_id else None
        fallback = self.fallback_price_point if self.fallback_price_point_id else None
        errors = {
            name: "Choose a price point of this offer's carrier."
            for name, price_point in (
                ("price_point", regular),
                ("first_period_price_point", first),
                ("fallback_price_point", fallback),
            )
            if price_point is not None and self.carrier_id is not None and price_point.carrier_id != self.carrier_id
        }
        if (
            not errors
            and first is not None
            and regular is not None
            and not (first.currency == regular.currency and first.amount_minor < regular.amount_minor)
        ):
            errors["first_period_price_point"] = (
                "A first-period price is a discount: in the regular price's currency and below it."
            )
        if fallback is not None and "fallback_price_point" not in errors:
            problem = fallback_problem(fallback, regular=regular, carrier=self.carrier if self.carrier_id else None)
            if problem:
                errors["fallback_price_point"] = problem
        if self.pk is not None:
            # Its subscriptions are billed on the carrier they opted in on: an offer never moves.
            before = PlanOffer.objects.filter(pk=self.pk).values_list("plan_id", "carrier_id").first()
            if before is not None and before != (self.plan_id, self.carrier_id):
                errors["carrier"] = "An offer stays on its plan and carrier: make a new offer instead."
        if errors:
            raise ValidationError(errors)


# Protocols on which PlayPay charges each renewal itself, each period by a one-click charge naming its amount: only
# there can a renewal be charged at another price. (The aggregator holds the schedule and the price of the
# subscriptions it renews.)
PLATFORM_MANAGED = (Protocol.SANDBOX, Protocol.PARLAYX, Protocol.CAMARA)


def downgrade_billing_allowed(carrier: Carrier) -> bool:
    """Whether renewals on `carrier` may be charged at a fallback price (downgrade billing): the carrier allows it
    (its flag, set by operations from the carrier's contract) and PlayPay charges each renewal there itself."""
    return carrier.supports_downgrade_billing and carrier.protocol in PLATFORM_MANAGED


def fallback_problem(fallback: PricePoint, *, regular: PricePoint | None, carrier: Carrier | None) -> str:
    """Why `fallback` cannot be an offer's fallback price below `regular` on `carrier`, said to operations; ""."""
    if not fallback.is_active:
        return "This price point is switched off: switch it on first, or choose another."
    if regular is not None and not (
        fallback.currency == regular.currency and fallback.amount_minor < regular.amount_minor
    ):
        return (
            "A fallback price is charged instead of the regular price when the player's balance is too low: it must "
            f"be in the regular price's currency and below it ({format_money(regular.amount_minor, regular.currency)})."
        )
    if carrier is not None and not downgrade_billing_allowed(carrier):
        return (
            f'{carrier.name} does not take downgrade billing: tick "downgrade billing" on the carrier first '
            "(only where PlayPay charges each renewal: sandbox, Parlay X, CAMARA), or leave this empty."
        )
    return ""


class Subscription(models.Model):
    """A player's subscription to a plan on one carrier.

    Period k runs from `periods.boundary(anchor_at, period, k)` to the next boundary; `period_index` is
    the period last paid for (the current one while active), `entitled_until` when the player's access
    ends (kept up to date by the state changes: the period's end, the grace period's, or now).
    `next_charge_at` is when the renewal engine next looks at it (a renewal, a retry, the end of a period
    whose cancellation was asked for); empty while a charge awaits its outcome or when nothing is due. On a
    carrier-managed subscription (`carrier_managed`) PlayPay charges nothing: it is when the carrier is asked
    about it, its renewal being overdue (`services.carrier_managed`).
    `price_point`, `amount_minor` and `currency` are the regular price stated in the opt-in's PIN message:
    renewals charge that price or nothing (`services.renewals`).
    """

    public_id = models.UUIDField(default=new_public_id, unique=True, editable=False)
    app = models.ForeignKey("tenants.App", on_delete=models.PROTECT, related_name="subscriptions")
    user_ref = models.CharField(max_length=128, help_text="The game's id of the player.")
    msisdn = models.CharField("MSISDN", max_length=16, help_text="E.164")
    carrier = models.ForeignKey("carriers.Carrier", on_delete=models.PROTECT, related_name="subscriptions")
    plan = models.ForeignKey(Plan, on_delete=models.PROTECT, related_name="subscriptions")
    offer = models.ForeignKey(PlanOffer, on_delete=models.PROTECT, related_name="subscriptions")
    # The regular price the player agreed to in the double opt-in (the one its PIN message stated): every
    # renewal charges it, whatever the offer's price point becomes later.
    price_point = models.ForeignKey(
        "carriers.PricePoint",
        on_delete=models.PROTECT,
        related_name="+",
        help_text="The price point of each renewal, as agreed at opt-in.",
    )
    amount_minor = models.BigIntegerField(help_text="The agreed price per period, in minor units of the currency.")
    currency = models.CharField(max_length=3)
    # Reporting's subscriber counts are kept by triggers on this table (reporting migration 0018) that read the app,
    # carrier, plan and status: a migration changing one of those columns' types drops and recreates them.
    status = models.CharField(
        max_length=16, choices=SubscriptionStatus.choices, default=SubscriptionStatus.PENDING_OPT_IN
    )
    idempotency_key = models.CharField(max_length=255, blank=True)
    anchor_at = models.DateTimeField(null=True, blank=True, help_text="Start of the first period (at opt-in).")
    period_index = models.PositiveIntegerField(default=0, help_text="The period last paid for (0: the first).")
    current_period_start = models.DateTimeField(null=True, blank=True)
    current_period_end = models.DateTimeField(null=True, blank=True)
    entitled_until = models.DateTimeField(null=True, blank=True)
    next_charge_at = models.DateTimeField(null=True, blank=True)
    cancel_at_period_end = models.BooleanField(default=False)
    cancel_reason = models.CharField(max_length=255, blank=True)
    cancelled_at = models.DateTimeField(null=True, blank=True)
    carrier_managed = models.BooleanField(
        default=False,
        editable=False,
        help_text="The carrier schedules and charges the renewals and tells of them (the aggregator's protocol).",
    )
    carrier_reference = models.CharField(
        max_length=64, blank=True, editable=False, help_text="The carrier's id of the subscription, once it took it."
    )
    journey_id = models.CharField(
        max_length=128, blank=True, help_text="The app's funnel journey of the opt-in (its steps are recorded there)."
    )
    carrier_cancel_due_at = models.DateTimeField(
        null=True,
        blank=True,
        editable=False,
        help_text="Set while its carrier has not confirmed the cancellation: when it is told (again).",
    )
    carrier_cancel_attempts = models.PositiveSmallIntegerField(
        default=0,
        editable=False,
        help_text="Times the carrier was told of the cancellation without confirming it (0 once it confirmed).",
    )
    metadata = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-id"]
        permissions = [("cancel_subscription", "Can cancel subscriptions")]
        constraints = [
            models.CheckConstraint(condition=Q(status__in=SubscriptionStatus.values), name="subscription_status_valid"),
            # The key per app: the same request sent twice opens one subscription.
            models.UniqueConstraint(
                fields=["app", "idempotency_key"],
                condition=~Q(idempotency_key=""),
                name="subscription_idempotency_key_unique_per_app",
            ),
            models.CheckConstraint(
                condition=Q(current_period_end__isnull=True) | Q(current_period_end__gt=F("current_period_start")),
                name="subscription_period_ends_after_start",
            ),
            models.CheckConstraint(condition=Q(amount_minor__gt=0), name="subscription_amount_positive"),
            # A carrier's callback names its subscription by the carrier's id: one subscription per id.
            models.UniqueConstraint(
                fields=["carrier", "carrier_reference"],
                condition=~Q(carrier_reference=""),
                name="subscription_carrier_reference_unique",
            ),
        ]
        indexes = [
            models.Index(fields=["app", "user_ref"]),
            models.Index(fields=["app", "status"]),
            # The admin's search by phone number.
            models.Index(fields=["msisdn"], name="subscription_msisdn_idx"),
            # Reporting's count of subscribers per status (and carrier) over every app.
            models.Index(fields=["status", "carrier"], name="subscr_status_carrier_idx"),
            # The reminders' query: the active subscriptions whose paid period ends within the reminder's notice.
            models.Index(
                fields=["current_period_end"], condition=Q(status="active"), name="subscription_active_end_idx"
            ),
            # The renewal engine's query: what is due, oldest first.
            models.Index(
                fields=["next_charge_at"], condition=Q(next_charge_at__isnull=False), name="subscription_due_idx"
            ),
            # Cancellations its carrier has not confirmed yet, to be told again.
            models.Index(
                fields=["carrier_cancel_due_at"],
                condition=Q(carrier_cancel_due_at__isnull=False),
                name="subscription_cancel_due_idx",
            ),
        ]

    def __str__(self) -> str:
        return str(self.public_id)


class SubscriptionStatusChange(models.Model):
    """One step of a subscription's history: who moved it, from what, to what, and why."""

    subscription = models.ForeignKey(Subscription, on_delete=models.CASCADE, related_name="history")
    from_status = models.CharField(max_length=16, blank=True)
    to_status = models.CharField(max_length=16)
    actor = models.CharField(max_length=150, help_text="app:<name>, carrier:<slug>, staff:<username> or system")
    reason = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        indexes = [
            models.Index(fields=["subscription", "id"]),
            # Reporting reads the changes of a period (new and churned subscribers).
            models.Index(fields=["created_at"], name="subscr_change_created_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.from_status or '∅'} → {self.to_status}"


# Every charge's payment names its subscription in its metadata under this key: a read of payments (the finance
# export) looks for a payment's charge only where it is there.
PAYMENT_METADATA_KEY = "subscription"


# The failure code of a renewal the carrier's monthly spend cap kept from being sent (carriers' ErrorCode).
SPEND_CAP_FAILURE = ErrorCode.SPENDING_LIMIT.value


class SubscriptionCharge(models.Model):
    """One attempt to charge one period of a subscription: the period and the payment that charges it.

    Exactly once, held by the database: the partial unique index `subscription_one_live_charge_per_period`
    allows, per subscription and period (its index, which fixes its start), one row whose outcome is
    `pending`, `succeeded` or `missed`. A second attempt for a period can be inserted only after the first one
    failed, so a period can neither be charged twice at once (two schedulers, a duplicate task) nor succeed
    twice; failed attempts (retries of an insufficient balance) stay as history. The outcome follows the
    payment's final status, set in the payment's own transaction (`services.charges.on_payment_status_changed`).

    A `failed` row with the failure code `spending_limit` and no payment is a renewal that the carrier's monthly
    spend cap kept from being sent (`services.caps`); it is retried as a declined one.

    A `missed` row has no payment: a period that ended before the engine could charge it (an outage, a
    carrier or price switched off, the retries of a declined period running past its end). It is never charged
    afterwards (the player could not use it), and the index keeps it so.

    On PostgreSQL the payment is referred to by (payment_id, payment_created_at), a composite foreign key
    to the monthly-partitioned payments (migration 0002), as refunds and ledger entries do.
    """

    class Kind(models.TextChoices):
        OPT_IN = "opt_in", "opt-in (first period, PIN)"
        RENEWAL = "renewal"

    class Outcome(models.TextChoices):
        PENDING = "pending"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        MISSED = "missed"

    subscription = models.ForeignKey(Subscription, on_delete=models.CASCADE, related_name="charges")
    kind = models.CharField(max_length=8, choices=Kind.choices)
    period_index = models.PositiveIntegerField()
    period_start = models.DateTimeField(null=True, blank=True, help_text="Empty for the opt-in until it succeeds.")
    period_end = models.DateTimeField(null=True, blank=True)
    attempt = models.PositiveSmallIntegerField(default=1, validators=[MinValueValidator(1)])
    payment = models.ForeignKey(
        "payments.Payment", null=True, blank=True, on_delete=models.PROTECT, related_name="+", db_constraint=False
    )
    payment_created_at = models.DateTimeField(
        null=True, blank=True, editable=False, help_text="The payment's created_at."
    )
    outcome = models.CharField(max_length=10, choices=Outcome.choices, default=Outcome.PENDING)
    fallback_price = models.BooleanField(
        default=False,
        help_text="Charged at the offer's lower fallback price (downgrade billing) instead of the agreed one; "
        "its payment holds the price point and amount charged.",
    )
    failure_code = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    settled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(
                fields=["subscription", "period_index"],
                condition=Q(outcome__in=["pending", "succeeded", "missed"]),
                name="subscription_one_live_charge_per_period",
            ),
            # A charge has its payment; only a missed period and a renewal refused by the carrier's monthly spend
            # cap (never sent) have none.
            models.CheckConstraint(
                condition=(
                    (Q(outcome="missed") | Q(outcome="failed", failure_code=SPEND_CAP_FAILURE))
                    & Q(payment__isnull=True, payment_created_at__isnull=True)
                )
                | (~Q(outcome="missed") & Q(payment__isnull=False, payment_created_at__isnull=False)),
                name="subscription_charge_payment_unless_unsent",
            ),
            models.UniqueConstraint(
                fields=["subscription", "period_index", "attempt"], name="subscription_charge_attempt_unique"
            ),
        ]
        indexes = [
            models.Index(fields=["payment", "payment_created_at"], name="subscr_charge_payment_idx"),
            # Reporting reads the charges of a period (recurring revenue, renewal success, paying subscribers).
            models.Index(fields=["created_at"], name="subscr_charge_created_idx"),
            # The rollups' refresh finds the charges settled since its last run.
            models.Index(
                fields=["settled_at"], condition=Q(settled_at__isnull=False), name="subscr_charge_settled_idx"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.subscription_id} period {self.period_index} attempt {self.attempt}: {self.outcome}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self.payment_created_at and self.payment is not None:
            self.payment_created_at = self.payment.created_at
        super().save(*args, **kwargs)


class SubscriptionNotice(models.Model):
    """A notice to the app about one period of a subscription, sent once: the reminder before the period is
    charged, the receipt after it was. The unique constraint holds "once" whoever sends it, however often."""

    class Kind(models.TextChoices):
        REMINDER = "reminder", "renewal reminder"
        RECEIPT = "receipt"

    subscription = models.ForeignKey(Subscription, on_delete=models.CASCADE, related_name="notices")
    period_index = models.PositiveIntegerField(help_text="The period it is about (the one renewed).")
    kind = models.CharField(max_length=8, choices=Kind.choices)
    skipped_reason = models.CharField(
        max_length=255, blank=True, help_text="Why it was not sent (a reminder too late to be of use); empty: sent."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(
                fields=["subscription", "period_index", "kind"], name="subscription_notice_once_per_period"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.subscription_id} period {self.period_index}: {self.kind}"
