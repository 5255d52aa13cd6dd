import uuid
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import F, Q

from playpay.ids import new_public_id, time_of

# A payment's UUIDv7 public id is made just before its row (`created_at`): a lookup by public id reads the
# payments created within this of the id's time (one month's partition, two across a month's turn).
PUBLIC_ID_SKEW = timedelta(days=1)

# On PostgreSQL the rows that refer to a payment do so by (payment_id, payment_created_at), composite foreign
# keys the migrations declare (payments 0022): their Django foreign keys say db_constraint=False.


class PaymentStatus(models.TextChoices):
    CREATED = "created"
    PIN_SENT = "pin_sent"
    PIN_VERIFIED = "pin_verified"
    CHARGING = "charging"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    EXPIRED = "expired"
    PARTIALLY_REFUNDED = "partially_refunded"
    REFUNDED = "refunded"
    REVERSED = "reversed"


# A payment not decided yet: the carrier has it, or will (its outcome may still change what it owes and is owed).
UNDECIDED_STATUSES = (PaymentStatus.CREATED, PaymentStatus.PIN_SENT, PaymentStatus.PIN_VERIFIED, PaymentStatus.CHARGING)


class PaymentFlow(models.TextChoices):
    PIN = "pin", "PIN / OTP"
    ONE_CLICK = "one_click", "one-click"


class OutcomeTracking(models.Model):
    """What payments, refunds and reversals share while the carrier has not stated an outcome.

    The resolver job (`payments.services.resolver.unknown_outcomes`) checks such a row again at
    `next_resolve_at`, with a growing wait, and logs an alert once it has been unknown too long. The
    fields are changed only through `payments.services.outcomes` (`mark_unknown`, `clear_unknown`).
    """

    outcome_unknown_since = models.DateTimeField(
        null=True, blank=True, help_text="Set while the carrier has not stated the outcome of our last call."
    )
    # Not Positive…: its CHECK constraint would scan the payments table under an exclusive lock when added.
    resolve_attempts = models.SmallIntegerField(
        "checks made",
        default=0,
        validators=[MinValueValidator(0)],
        help_text="Checks made with the carrier since the outcome became unknown.",
    )
    next_resolve_at = models.DateTimeField(
        "next check", null=True, blank=True, help_text="When the carrier is next asked about an unknown outcome."
    )
    outcome_alerted_at = models.DateTimeField(
        "reported at",
        null=True,
        blank=True,
        help_text="When the outcome, unknown for too long, was reported as an error.",
    )

    class Meta:
        abstract = True


def public_id_filters(public_id: uuid.UUID | str) -> dict[str, Any] | None:
    """The filters of the payment of this public id (None for a value that is no UUID): the partitions of the
    months around the time inside a UUIDv7; an older (v4) id is looked up in every partition."""
    try:
        parsed = public_id if isinstance(public_id, uuid.UUID) else uuid.UUID(str(public_id))
        made = time_of(parsed)
        if made is None:
            return {"public_id": parsed}
        return {"public_id": parsed, "created_at__gte": made - PUBLIC_ID_SKEW, "created_at__lt": made + PUBLIC_ID_SKEW}
    except (ValueError, OverflowError):  # no UUID, or one whose time is past what a date can hold: none of ours
        return None


class PaymentQuerySet(models.QuerySet["Payment"]):
    def with_public_id(self, public_id: uuid.UUID | str) -> "PaymentQuerySet":
        """The payment of this public id (none for a value that is no UUID): `public_id_filters`."""
        filters = public_id_filters(public_id)
        return self.none() if filters is None else self.filter(**filters)


class Payment(OutcomeTracking):
    """A payment.

    On PostgreSQL the table is partitioned by month of `created_at` (payments.partitions), primary key (id,
    created_at) there; unique keys must hold the partition key, so the public id is unique with it (ids are
    made here: v7 or v4, 74 or 122 random bits), and the idempotency key per app and the carrier reference
    per carrier are kept unique by the key tables `PaymentIdempotencyKey` and `PaymentCarrierReference`.
    Look a payment up by public id with `Payment.objects.with_public_id`, which reads only its months.
    """

    public_id = models.UUIDField(default=new_public_id, editable=False)
    app = models.ForeignKey("tenants.App", on_delete=models.PROTECT, related_name="payments")
    user_ref = models.CharField(max_length=128, help_text="The game's id of the player.")
    msisdn = models.CharField("MSISDN", max_length=16, help_text="E.164")
    carrier = models.ForeignKey("carriers.Carrier", on_delete=models.PROTECT, related_name="payments")
    price_point = models.ForeignKey("carriers.PricePoint", on_delete=models.PROTECT, related_name="payments")
    amount_minor = models.BigIntegerField()
    currency = models.CharField(max_length=3)
    # Refunded or being refunded (pending refunds reserve their amount), never above amount_minor.
    refunded_minor = models.BigIntegerField(default=0)
    status = models.CharField(max_length=20, choices=PaymentStatus.choices, default=PaymentStatus.CREATED)
    flow = models.CharField(max_length=12, choices=PaymentFlow.choices)
    idempotency_key = models.CharField(max_length=255, blank=True)
    journey_id = models.CharField(max_length=128, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    carrier_reference = models.CharField(max_length=128, blank=True)
    failure_code = models.CharField(max_length=64, blank=True)
    failure_message = models.CharField(max_length=255, blank=True)
    pin_attempts = models.PositiveSmallIntegerField(default=0)
    pin_expires_at = models.DateTimeField(null=True, blank=True)
    pin_submitted_at = models.DateTimeField(
        null=True, blank=True, help_text="When the player's PIN was submitted; its check by the carrier is awaited."
    )
    # The submitted PIN, encrypted (playpay.crypto), from the confirm request until the carrier-queue task
    # that checks it takes it: never in clear, never in a broker message.
    pin_ciphertext = models.TextField(blank=True, editable=False)
    pin_error = models.CharField(
        max_length=64,
        blank=True,
        help_text="Why the last PIN submitted was not accepted (the player may submit again).",
    )
    # What the carrier protocol keeps between calls (OTP session, reservation...); never shown to apps.
    carrier_data = models.JSONField(default=dict, blank=True)
    charge_attempts = models.PositiveSmallIntegerField(default=0)
    insufficient_funds_declines = models.PositiveSmallIntegerField(
        default=0,
        help_text="Insufficient-funds declines so far; later one-click attempts follow the carrier's schedule.",
    )
    next_attempt_at = models.DateTimeField(null=True, blank=True, help_text="When a later charge attempt is due.")
    # The ledger's figures of the payment (payments.figures), in minor units of `currency`, kept as its entries
    # are posted (payments.services.ledger), so that reports of many payments do not group their lines.
    gross_minor = models.BigIntegerField(default=0, editable=False)
    tax_minor = models.BigIntegerField(default=0, editable=False)
    carrier_share_minor = models.BigIntegerField(default=0, editable=False)
    platform_revenue_minor = models.BigIntegerField(default=0, editable=False)
    app_payable_minor = models.BigIntegerField(default=0, editable=False)
    net_minor = models.BigIntegerField(default=0, editable=False)
    paid_back_minor = models.BigIntegerField(default=0, editable=False)
    charged_at = models.DateTimeField(null=True, blank=True, editable=False)
    refunded_at = models.DateTimeField(null=True, blank=True, editable=False, help_text="Its last refund's posting.")
    reversed_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = PaymentQuerySet.as_manager()

    class Meta:
        ordering = ["-id"]
        permissions = [
            ("refund_payment", "Can refund payments"),
            ("reverse_payment", "Can reverse payments"),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(amount_minor__gt=0), name="payment_amount_positive"),
            models.CheckConstraint(
                condition=Q(refunded_minor__gte=0) & Q(refunded_minor__lte=F("amount_minor")),
                name="payment_refunds_within_amount",
            ),
            models.CheckConstraint(condition=Q(status__in=PaymentStatus.values), name="payment_status_valid"),
            models.UniqueConstraint(fields=["public_id", "created_at"], name="payment_public_id_unique"),
        ]
        indexes = [
            models.Index(fields=["app", "-created_at"]),
            models.Index(fields=["carrier", "carrier_reference"]),
            models.Index(fields=["status", "updated_at"]),
            models.Index(fields=["msisdn"]),
            models.Index(fields=["app", "user_ref"]),
            models.Index(
                fields=["outcome_unknown_since"],
                condition=Q(outcome_unknown_since__isnull=False),
                name="payment_outcome_unknown_idx",
            ),
            models.Index(
                fields=["next_attempt_at"], condition=Q(next_attempt_at__isnull=False), name="payment_next_attempt_idx"
            ),
            # Where a carrier's queue of paced renewals (created, waiting for their moment) ends: one probe.
            models.Index(
                fields=["carrier", "next_attempt_at"],
                condition=Q(status="created", next_attempt_at__isnull=False),
                name="payment_paced_idx",
            ),
            # The analytics shipping reads payments changed since its mark, in (updated_at, id) order.
            models.Index(fields=["updated_at", "id"], name="payment_updated_idx"),
        ]

    def __str__(self) -> str:
        return str(self.public_id)


class PaymentIdempotencyKey(models.Model):
    """An app's idempotency key, claimed by the payment it created (in the transaction that inserts it).

    The payments table is partitioned by month, and a unique key there holds the month: this small table
    keeps the key unique per app across all months. Its rows leave with their payment's month (archive).
    """

    app = models.ForeignKey("tenants.App", on_delete=models.PROTECT, related_name="+")
    key = models.CharField(max_length=255)
    payment = models.ForeignKey(Payment, on_delete=models.CASCADE, related_name="+", db_constraint=False)
    payment_created_at = models.DateTimeField(editable=False)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["app", "key"], name="payment_idempotency_key_unique_per_app")]

    def __str__(self) -> str:
        return f"{self.app_id}:{self.key}"


class PaymentCarrierReference(models.Model):
    """A carrier's reference for a payment, unique per carrier across all months: a carrier's callback
    naming the reference finds its payment here, then reads that payment's month only."""

    carrier = models.ForeignKey("carriers.Carrier", on_delete=models.PROTECT, related_name="+")
    reference = models.CharField(max_length=128)
    payment = models.ForeignKey(Payment, on_delete=models.CASCADE, related_name="+", db_constraint=False)
    payment_created_at = models.DateTimeField(editable=False)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["carrier", "reference"], name="payment_carrier_reference_unique")
        ]

    def __str__(self) -> str:
        return f"{self.carrier_id}:{self.reference}"


class PaymentStatusChange(models.Model):
    """One step of a payment's history.

    On PostgreSQL the table is partitioned by month of `payment_created_at` (payments.partitions), the
    payment's own creation time, so that a payment's whole history sits in its month's partition and leaves
    with it; its primary key there is (id, payment_created_at). Whoever inserts rows without `save()` (bulk
    SQL) sets `payment_created_at` to the payment's `created_at`.
    """

    payment = models.ForeignKey(Payment, on_delete=models.CASCADE, related_name="history", db_constraint=False)
    payment_created_at = models.DateTimeField(editable=False, help_text="The payment's created_at.")
    from_status = models.CharField(max_length=20, blank=True)
    to_status = models.CharField(max_length=20)
    actor = models.CharField(max_length=150, help_text="app:<name>, carrier:<slug>, staff:<username> or system")
    reason = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["payment", "id"])]

    def __str__(self) -> str:
        return f"{self.from_status or '∅'} → {self.to_status}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self.payment_created_at:
            # The payment is in hand wherever history is written (no query); by id alone, it is read.
            self.payment_created_at = self.payment.created_at
        super().save(*args, **kwargs)


class IdempotencyRecord(models.Model):
    """An Idempotency-Key claimed by an app, and the response it produced."""

    class State(models.TextChoices):
        IN_FLIGHT = "in_flight"
        COMPLETED = "completed"

    app = models.ForeignKey("tenants.App", on_delete=models.CASCADE, related_name="idempotency_records")
    key = models.CharField(max_length=255)
    fingerprint = models.CharField(max_length=64, help_text="Hash of method, path and body.")
    state = models.CharField(max_length=12, choices=State.choices, default=State.IN_FLIGHT)
    resource_id = models.UUIDField(null=True, blank=True, help_text="Public id of what the request created.")
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    response_body = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["app", "key"], name="idempotency_key_unique_per_app")]
        indexes = [models.Index(fields=["created_at"])]

    def __str__(self) -> str:
        return f"{self.app_id}:{self.key}"


class OutboxMessage(models.Model):
    """A task to enqueue, written in the same transaction as the state change that calls for it.

    It is sent right after the commit; the relay job sends whatever a dead process left behind.
    """

    task = models.CharField(max_length=200)
    kwargs = models.JSONField(default=dict)
    queue = models.CharField(max_length=100)
    countdown_seconds = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["created_at"], condition=Q(sent_at__isnull=True), name="outbox_unsent_idx")]

    def __str__(self) -> str:
        return f"{self.task} → {self.queue}"


class CarrierNotification(models.Model):
    """A verified carrier callback. Its unique id makes duplicates and replays change nothing."""

    carrier = models.ForeignKey("carriers.Carrier", on_delete=models.PROTECT, related_name="notifications")
    notification_id = models.CharField(max_length=200)
    kind = models.CharField(max_length=20)
    outcome = models.CharField(max_length=20)
    carrier_reference = models.CharField(max_length=128, blank=True)
    raw_code = models.CharField(max_length=100, blank=True)
    result = models.CharField(max_length=200, blank=True, help_text="What applying it did.")
    received_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["carrier", "notification_id"], name="carrier_notification_unique")
        ]
        indexes = [models.Index(fields=["carrier", "carrier_reference"])]

    def __str__(self) -> str:
        return f"{self.carrier_id}:{self.notification_id}"


class WebhookSecret(models.Model):
    """A secret an app verifies our webhooks with (Standard Webhooks `whsec_…`).

    Several can be active during a rotation; every webhook is signed with each.
    """

    app = models.ForeignKey("tenants.App", on_delete=models.CASCADE, related_name="webhook_secrets")
    secret_encrypted = models.TextField(editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True, help_text="Empty: active until rotated.")

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"secret of {self.app} from {self.created_at:%Y-%m-%d}"


class WebhookDelivery(models.Model):
    """One webhook to an app, retried with backoff for about three days."""

    class Status(models.TextChoices):
        PENDING = "pending"
        SUCCEEDED = "succeeded"
        FAILED = "failed", "failed (retries exhausted)"
        ABANDONED = "abandoned", "abandoned (endpoint gone)"

    app = models.ForeignKey("tenants.App", on_delete=models.CASCADE, related_name="webhook_deliveries")
    payment = models.ForeignKey(
        Payment, null=True, blank=True, on_delete=models.SET_NULL, related_name="+", db_constraint=False
    )
    payment_created_at = models.DateTimeField(
        null=True, blank=True, editable=False, help_text="The payment's created_at (its month, on PostgreSQL)."
    )
    message_id = models.CharField(max_length=64, unique=True)
    event_type = models.CharField(max_length=64)
    payload = models.JSONField()
    url = models.URLField()
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "webhook deliveries"
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["next_attempt_at"], condition=Q(status="pending"), name="webhook_due_idx"),
            models.Index(fields=["app", "-created_at"]),
        ]
        constraints = [
            # The foreign key (payment_id, payment_created_at) is MATCH SIMPLE: it checks nothing while either is
            # NULL, so a payment named without its month (bulk_create, update(payment=…)) would go unchecked.
            # The month alone without the payment is harmless (Django's SET_NULL clears only the payment).
            models.CheckConstraint(
                condition=Q(payment__isnull=True) | Q(payment_created_at__isnull=False),
                name="webhook_delivery_payment_has_month",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} → {self.app}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.payment is not None and self.payment_created_at is None:
            self.payment_created_at = self.payment.created_at
        super().save(*args, **kwargs)


class WebhookAttempt(models.Model):
    delivery = models.ForeignKey(WebhookDelivery, on_delete=models.CASCADE, related_name="attempt_log")
    attempted_at = models.DateTimeField(auto_now_add=True)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    error = models.CharField(max_length=255, blank=True)
    duration_ms = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.status_code or self.error}"


class MoneyOperation(OutcomeTracking):
    """What refunds and reversals share: a status, a reason, who asked, how it was paid back."""

    class Status(models.TextChoices):
        PENDING = "pending"
        SUCCEEDED = "succeeded"
        FAILED = "failed"

    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    reason = models.CharField(max_length=255)
    requested_by = models.CharField(max_length=150, help_text="app:<name> or staff:<username>")
    # False when the carrier cannot do it: the platform pays the player back outside the carrier.
    via_carrier = models.BooleanField(default=True)
    failure_code = models.CharField(max_length=64, blank=True)
    failure_message = models.CharField(max_length=255, blank=True)
    # Set when the carrier is asked (a second run of the task then does nothing); cleared when it was not
    # reached, so that it is asked again.
    carrier_requested_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        abstract = True


class Refund(MoneyOperation):
    """Money paid back on a payment, in part or in whole.

    On PostgreSQL refunds are partitioned by month of `payment_created_at`, their payment's `created_at`
    (payments.partitions), like the payment's history and ledger: primary key (id, payment_created_at) there,
    the ledger entries referring to a refund by (refund_id, payment_created_at), and the public id unique with
    the month, (public_id, payment_created_at) (ids are made here, random: see docs/operations.md). Whoever
    inserts refunds without `save()` (bulk SQL) sets `payment_created_at`.
    """

    public_id = models.UUIDField(default=new_public_id, unique=True, editable=False)
    payment = models.ForeignKey(Payment, on_delete=models.PROTECT, related_name="refunds", db_constraint=False)
    payment_created_at = models.DateTimeField(editable=False, help_text="The payment's created_at.")
    amount_minor = models.BigIntegerField()
    currency = models.CharField(max_length=3)
    carrier_reference = models.CharField(max_length=128, blank=True)

    class Meta:
        ordering = ["-id"]
        constraints = [models.CheckConstraint(condition=Q(amount_minor__gt=0), name="refund_amount_positive")]
        indexes = [
            models.Index(fields=["status", "created_at"]),
            models.Index(
                fields=["next_resolve_at"],
                condition=Q(outcome_unknown_since__isnull=False),
                name="refund_outcome_unknown_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"refund {self.amount_minor} {self.currency} of {self.payment_id}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self.payment_created_at:
            self.payment_created_at = self.payment.created_at
        super().save(*args, **kwargs)


class Reversal(MoneyOperation):
    """A technical reversal of a whole charge, e.g. the game could not deliver the item.

    On PostgreSQL reversals are partitioned by month of `payment_created_at` like refunds; one reversal per
    payment is kept there by the unique key (payment_id, payment_created_at), global since a payment has one
    `created_at`. Whoever inserts reversals without `save()` (bulk SQL) sets `payment_created_at`.
    """

    payment = models.OneToOneField(Payment, on_delete=models.PROTECT, related_name="reversal", db_constraint=False)
    payment_created_at = models.DateTimeField(editable=False, help_text="The payment's created_at.")

    class Meta:
        indexes = [
            models.Index(
                fields=["next_resolve_at"],
                condition=Q(outcome_unknown_since__isnull=False),
                name="reversal_outcome_unknown_idx",
            )
        ]

    def __str__(self) -> str:
        return f"reversal of {self.payment_id}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self.payment_created_at:
            self.payment_created_at = self.payment.created_at
        super().save(*args, **kwargs)


class AppendOnly(models.Model):
    """Rows that are written once and never changed or deleted (on PostgreSQL, triggers agree)."""

    class Meta:
        abstract = True

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            raise ImmutableLedger(f"{self._meta.verbose_name_plural} are never changed; post an opposite entry")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> Any:
        raise ImmutableLedger(f"{self._meta.verbose_name_plural} are never deleted; post an opposite entry")


class LedgerEntry(AppendOnly):
    """A balanced set of ledger lines posted together; never changed, corrected by an opposite entry.

    On PostgreSQL entries and their lines are partitioned by month of `payment_created_at`, their payment's
    `created_at` (payments.partitions), like the payment's status history: primary keys (id,
    payment_created_at) there, lines referring to their entry by (entry_id, payment_created_at). Whoever
    inserts entries or lines without `save()` (bulk_create, SQL) sets `payment_created_at`.
    """

    class Kind(models.TextChoices):
        CHARGE = "charge"
        REFUND = "refund"
        REVERSAL = "reversal"

    kind = models.CharField(max_length=10, choices=Kind.choices)
    payment = models.ForeignKey(Payment, on_delete=models.PROTECT, related_name="ledger_entries", db_constraint=False)
    payment_created_at = models.DateTimeField(editable=False, help_text="The payment's created_at.")
    refund = models.OneToOneField(Refund, null=True, blank=True, on_delete=models.PROTECT, related_name="entry")
    memo = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "ledger entries"
        ordering = ["id"]
        # The admin's list, newest first and by a date-time range, at millions of entries.
        indexes = [models.Index(fields=["created_at", "id"], name="ledger_entry_created_idx")]
        constraints = [
            # At most one charge and one reversal entry per payment: posting twice is impossible. With the
            # payment's month, which the payment alone decides: one key holds it across partitions.
            models.UniqueConstraint(
                fields=["payment", "payment_created_at", "kind"],
                condition=Q(kind__in=["charge", "reversal"]),
                name="ledger_one_charge_and_reversal_per_payment",
            )
        ]

    def __str__(self) -> str:
        return f"{self.kind} #{self.pk}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self.payment_created_at:
            self.payment_created_at = self.payment.created_at
        super().save(*args, **kwargs)


class LedgerLine(AppendOnly):
    """One side of an entry: a signed amount (debit positive, credit negative) on an account."""

    entry = models.ForeignKey(LedgerEntry, on_delete=models.PROTECT, related_name="lines")
    payment_created_at = models.DateTimeField(editable=False, help_text="The entry's payment_created_at.")
    account = models.CharField(max_length=100, db_index=True)
    amount_minor = models.BigIntegerField()
    currency = models.CharField(max_length=3)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["account", "currency"])]
        constraints = [models.CheckConstraint(condition=~Q(amount_minor=0), name="ledger_line_not_zero")]

    def __str__(self) -> str:
        return f"{self.account} {self.amount_minor:+d} {self.currency}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self.payment_created_at:
            self.payment_created_at = self.entry.payment_created_at
        super().save(*args, **kwargs)


class ImmutableLedger(Exception):
    pass


class RefundApproval(models.Model):
    """A staff refund waiting for a second staff member (four-eyes): a large amount, or one of a bulk refund.

    Approving it runs the refund; the approver is never the requester (the database refuses it).
    """

    class Status(models.TextChoices):
        PENDING = "pending", "awaiting approval"
        APPROVED = "approved"
        REJECTED = "rejected"

    payment = models.ForeignKey(Payment, on_delete=models.PROTECT, related_name="+", db_constraint=False)
    payment_created_at = models.DateTimeField(editable=False, help_text="The payment's created_at (its month).")
    # None: all that is left when it is approved.
    amount_minor = models.BigIntegerField(null=True, blank=True)
    currency = models.CharField(max_length=3)
    reason = models.CharField(max_length=255)
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    requested_at = models.DateTimeField(auto_now_add=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    decision_reason = models.CharField(max_length=255, blank=True)
    outcome = models.CharField(max_length=255, blank=True, help_text="What approving it did.")

    class Meta:
        ordering = ["-id"]
        permissions = [("approve_refund", "Can approve refunds (four-eyes)")]
        indexes = [models.Index(fields=["status", "requested_at"])]
        constraints = [
            models.CheckConstraint(
                condition=Q(amount_minor__isnull=True) | Q(amount_minor__gt=0), name="refund_approval_amount_positive"
            ),
            models.CheckConstraint(condition=~Q(decided_by=F("requested_by")), name="refund_approval_not_by_requester"),
            models.CheckConstraint(
                condition=Q(status="pending", decided_by__isnull=True)
                | (~Q(status="pending") & Q(decided_by__isnull=False, decided_at__isnull=False)),
                name="refund_approval_decided_by_someone",
            ),
        ]

    def __str__(self) -> str:
        return f"refund approval #{self.pk} ({self.get_status_display()})"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self.payment_created_at:
            self.payment_created_at = self.payment.created_at
        super().save(*args, **kwargs)


class PlayerBlock(models.Model):
    """A player an app takes no more payments from: a phone number, or one of the app's users (user_ref).

    Set and lifted through `payments.services.players` (each recorded in the staff log); payment creation
    refuses a blocked player with the problem `player_blocked`.
    """

    app = models.ForeignKey("tenants.App", on_delete=models.CASCADE, related_name="+")
    msisdn = models.CharField("MSISDN", max_length=16, blank=True, help_text="E.164; empty when a user is blocked.")
    user_ref = models.CharField(max_length=128, blank=True, help_text="Empty when a number is blocked.")
    reason = models.CharField(max_length=255)
    blocked_by = models.CharField(max_length=150, help_text="staff:<username>")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=(Q(msisdn="") & ~Q(user_ref="")) | (~Q(msisdn="") & Q(user_ref="")),
                name="player_block_number_or_user",
            ),
            models.UniqueConstraint(
                fields=["app", "msisdn"], condition=~Q(msisdn=""), name="player_block_number_once_per_app"
            ),
            models.UniqueConstraint(
                fields=["app", "user_ref"], condition=~Q(user_ref=""), name="player_block_user_once_per_app"
            ),
        ]
        indexes = [models.Index(fields=["msisdn"], condition=~Q(msisdn=""), name="player_block_msisdn_idx")]
        # Players' data: who may read their numbers in full (the others see them masked, +44772*****85).
        permissions = [("view_full_msisdn", "Can see players' full phone numbers")]

    def __str__(self) -> str:
        return f"{self.app_id}: {self.msisdn or self.user_ref}"
