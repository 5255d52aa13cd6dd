"""Reads of payments: an app's payment as the API reads it, and for staff screens a payment's whole story in
order, what the admin's one search box matches, and a player's figures."""

import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Any

from django.db.models import Count, F, Q, Sum
from django.utils import timezone

from carriers.models import Carrier, PricePoint
from carriers.msisdn import msisdn_readings
from journal.models import StaffAction
from journal.selectors import summary as journal_summary
from journal.selectors import timeline as journal_timeline
from payments.models import (
    PUBLIC_ID_SKEW,
    UNDECIDED_STATUSES,
    CarrierNotification,
    LedgerEntry,
    Payment,
    PaymentCarrierReference,
    PaymentIdempotencyKey,
    PaymentQuerySet,
    PaymentStatus,
    PlayerBlock,
    WebhookAttempt,
    public_id_filters,
)
from payments.services.refunds import refunds_of, reversals_of
from playpay.compiled_reads import CompiledRead
from playpay.ids import prefix_range
from playpay.money import currency_exponent, format_money, signed_money
from playpay.partitions import month_bounds, month_start
from playpay.redaction import msisdn_hash
from playpay.times import utc_text
from tenants.models import App

# What the API's answer about a payment names with it.
_ANSWERED_WITH = ("carrier", "price_point")
# Every API call about one payment reads it so (its SQL built once per process).
_APP_PAYMENT = CompiledRead(lambda: Payment.objects.select_related(*_ANSWERED_WITH))


def payments_of_app(app: App) -> PaymentQuerySet:
    """The app's payments, with what the API's answer names (an app sees its own only)."""
    return Payment.objects.filter(app=app).select_related(*_ANSWERED_WITH)


def payment_of_app(app: App, public_id: uuid.UUID | str) -> Payment:
    """The app's payment of this public id, with its carrier and price point; Payment.DoesNotExist when the app
    has none of that id (or it is no UUID)."""
    filters = public_id_filters(public_id)
    if filters is None:
        raise Payment.DoesNotExist(f"no payment has the id {public_id!r}")
    return _APP_PAYMENT.get(app=app.pk, **filters)


# What the journal alone knows; the rest (staff actions, webhooks, callbacks) is read from its own table,
# which also holds what the journal has not stored yet.
JOURNAL_KINDS = ("api_request", "carrier_call")


@dataclass(frozen=True)
class TimelineEvent:
    at: datetime
    kind: str  # status, api call, carrier call, carrier callback, webhook, ledger, refund, reversal, staff
    summary: str

    @property
    def when(self) -> str:
        return utc_text(self.at)


def payment_timeline(payment: Payment) -> list[TimelineEvent]:
    """Everything that happened to `payment`, oldest first: status changes, API and carrier calls, carrier
    callbacks, webhooks to the app, ledger entries, refunds, reversals and staff actions."""
    month = payment.created_at  # rows partitioned by the payment's month: only its partition is read
    events = [
        TimelineEvent(
            change.created_at,
            "status",
            f"{change.from_status or '—'} → {change.to_status} by {change.actor}"
            + (f": {change.reason}" if change.reason else ""),
        )
        for change in payment.history.filter(payment_created_at=month)
    ]
    for document in journal_timeline(payment_id=str(payment.public_id)):
        if document.get("kind") in JOURNAL_KINDS:
            at = datetime.fromisoformat(document["occurred_at"])
            events.append(TimelineEvent(at, str(document["kind"]).replace("_", " "), journal_summary(document)))
    if payment.carrier_reference:
        events += [
            TimelineEvent(n.received_at, "carrier callback", f"{n.kind} {n.outcome} ({n.raw_code}): {n.result}")
            for n in CarrierNotification.objects.filter(
                carrier=payment.carrier, carrier_reference=payment.carrier_reference
            )
        ]
    events += [
        TimelineEvent(
            attempt.attempted_at,
            "webhook",
            f"{attempt.delivery.event_type} → "
            + (f"HTTP {attempt.status_code}" if attempt.status_code else attempt.error or "no answer")
            + f" ({attempt.duration_ms} ms)",
        )
        for attempt in WebhookAttempt.objects.filter(delivery__payment=payment).select_related("delivery")
    ]
    for entry in LedgerEntry.objects.filter(payment=payment, payment_created_at=month).prefetch_related("lines"):
        lines = ", ".join(
            f"{line.account} {signed_money(line.amount_minor, line.currency)}" for line in entry.lines.all()
        )
        events.append(TimelineEvent(entry.created_at, "ledger", f"{entry.kind} #{entry.pk}: {lines}"))
    for refund in refunds_of(payment):
        how = "through the carrier" if refund.via_carrier else "by the platform"
        events.append(
            TimelineEvent(
                refund.created_at,
                "refund",
                f"{format_money(refund.amount_minor, refund.currency)} {how}, {refund.status}, "
                f"asked by {refund.requested_by}: {refund.reason}",
            )
        )
    for reversal in reversals_of(payment):
        events.append(
            TimelineEvent(
                reversal.created_at,
                "reversal",
                f"{reversal.status}, asked by {reversal.requested_by}: {reversal.reason}",
            )
        )
    for action in StaffAction.objects.filter(object_type="payment", object_id=str(payment.public_id)).select_related(
        "user"
    ):
        events.append(
            TimelineEvent(
                action.created_at, "staff", f"{action.user}: {action.action} — {action.reason} → {action.outcome}"
            )
        )
    events.sort(key=lambda event: event.at)
    return events


# A prefix of a payment id is searched from this many hex digits: 8 name one UUIDv7 minute (about 65 s).
MIN_PUBLIC_ID_PREFIX = 8
# At most this many payments are taken from a key table for one term (a key names one payment per app/carrier).
_KEY_MATCHES = 50
_HEX = re.compile(r"[0-9a-f]+")
# Ids made before UUIDv7 are random (v4): their leading digits name no time worth bounding the search with.
_V7_SINCE = datetime(2024, 1, 1, tzinfo=UTC)
CHARGED = [PaymentStatus.SUCCEEDED, PaymentStatus.PARTIALLY_REFUNDED, PaymentStatus.REFUNDED, PaymentStatus.REVERSED]


@dataclass(frozen=True)
class Player:
    """Whom a player page is about: an app's user (app and user_ref), or a phone number (E.164) in any app."""

    app: App | None = None
    user_ref: str = ""
    msisdn: str = ""

    @property
    def public_id(self) -> str:
        """How the staff log names the player: the app, and the number's keyed hash (never the number) or the
        user_ref."""
        app = f"app{self.app.pk}:" if self.app is not None else ""
        who = f"msisdn:{msisdn_hash(self.msisdn)[:24]}" if self.msisdn else f"user:{self.user_ref}"
        return (app + who)[:64]

    def payments(self) -> Any:
        if self.msisdn:
            return Payment.objects.filter(msisdn=self.msisdn)
        return Payment.objects.filter(app=self.app, user_ref=self.user_ref)


@dataclass(frozen=True)
class Search:
    """What a search term matched: the payments, and the numbers (E.164) it was read as."""

    payments: Any
    readings: list[str] = field(default_factory=list)


def search_payments(*, term: str, queryset: Any = None) -> Search:
    """The payments `term` names, any of: a public id or a prefix of at least 8 hex digits (dashes optional),
    an MSISDN in any format (national ones read in the countries of the active carriers), a user_ref, a
    carrier reference or an idempotency key. Each reading uses an index; ids and keys read only their months.
    """
    base = Payment.objects.all() if queryset is None else queryset
    term = term.strip()
    if not term:
        return Search(payments=base)
    wanted = _by_user_ref(term) | _by_key_tables(term)
    compact = term.lower().replace("-", "")
    if len(compact) == 32 and _HEX.fullmatch(compact):
        wanted |= payments_named(Payment.objects.with_public_id(compact).values_list("pk", "created_at"))
    elif MIN_PUBLIC_ID_PREFIX <= len(compact) < 32 and _HEX.fullmatch(compact):
        wanted |= _by_public_id_prefix(compact)
    readings = msisdn_readings(term, regions=active_regions()) if not compact.isalpha() else []
    if readings:
        wanted |= Q(msisdn__in=readings)
    return Search(payments=base.filter(wanted), readings=readings)


def active_regions() -> list[str]:
    """The countries of the carriers that take payments, where a national-format number is read."""
    return sorted(set(Carrier.objects.filter(is_active=True).values_list("country_id", flat=True)))


def _by_user_ref(term: str) -> Q:
    # The index is (app, user_ref): every app named, so that it serves the search (apps are few).
    return Q(app__in=list(App.objects.values_list("pk", flat=True)), user_ref=term)


def _by_key_tables(term: str) -> Q:
    """Payments whose carrier reference or idempotency key is `term`, each read in its month only."""
    carriers = list(Carrier.objects.values_list("pk", flat=True))
    apps = list(App.objects.values_list("pk", flat=True))
    keys = [
        *PaymentCarrierReference.objects.filter(carrier__in=carriers, reference=term).values_list(
            "payment_id", "payment_created_at"
        )[:_KEY_MATCHES],
        *PaymentIdempotencyKey.objects.filter(app__in=apps, key=term).values_list("payment_id", "payment_created_at")[
            :_KEY_MATCHES
        ],
    ]
    return payments_named(keys)


def payments_named(payments: Any) -> Q:
    """These (id, created_at) pairs, as a condition each arm of which reads one month by its primary key (a
    subquery in an OR would make PostgreSQL read every partition)."""
    found = Q(pk__in=[])
    for payment_id, created_at in payments:
        found |= Q(pk=payment_id, created_at=created_at)
    return found


def _by_public_id_prefix(prefix: str) -> Q:
    """The ids starting with `prefix`: a range of uuids (the unique index on the public id serves it) and, for a
    UUIDv7, the range of creation times its leading digits name (the months to read)."""
    low, high = prefix_range(prefix)
    found = Q(public_id__gte=low, public_id__lte=high)
    shift = 4 * max(12 - len(prefix), 0)
    first_ms, last_ms = (int(prefix[:12], 16) << shift), ((int(prefix[:12], 16) + 1) << shift) - 1
    try:
        first = datetime.fromtimestamp(first_ms / 1000, tz=UTC)
        last = datetime.fromtimestamp(last_ms / 1000, tz=UTC)
    except (OverflowError, ValueError, OSError):
        return found
    if first >= _V7_SINCE and last <= timezone.now() + PUBLIC_ID_SKEW:
        found &= Q(created_at__gte=first - PUBLIC_ID_SKEW, created_at__lt=last + PUBLIC_ID_SKEW)
    return found


def players_named(search: Search, term: str, *, most: int = 10) -> list[Player]:
    """The players `term` names: the first number it reads as that has payments, else its user_ref in each app
    that has payments from it (at most `most` apps, the first by id, listed by name)."""
    for number in search.readings:
        if Payment.objects.filter(msisdn=number).exists():
            return [Player(msisdn=number)]
    user_ref = term.strip()
    apps = Payment.objects.filter(_by_user_ref(user_ref)).values_list("app", flat=True).order_by("app").distinct()
    return [Player(app=app, user_ref=user_ref) for app in App.objects.filter(pk__in=list(apps[:most])).order_by("name")]


def player_named(search: Search, term: str) -> Player | None:
    """The player `term` names: a number that has payments, else a user_ref of exactly one app."""
    players = players_named(search, term, most=2)
    return players[0] if len(players) == 1 else None


@dataclass(frozen=True)
class CurrencyTotals:
    currency: str
    charged_minor: int
    refunded_minor: int
    reversed_minor: int

    @property
    def spent_minor(self) -> int:
        """What the player paid and kept paid: charged, less refunds and reversals."""
        return self.charged_minor - self.refunded_minor - self.reversed_minor


@dataclass(frozen=True)
class PlayerSummary:
    payments: int
    totals: list[CurrencyTotals]
    failure_codes: list[tuple[str, int]]
    blocks: list[PlayerBlock]


def player_summary(player: Player) -> PlayerSummary:
    """A player's lifetime figures over all their payments, per currency, and the blocks that apply to them."""
    payments = player.payments()
    per_currency = (
        payments.filter(status__in=CHARGED)
        .values("currency")
        .annotate(
            charged=Sum("amount_minor"),
            refunded=Sum("refunded_minor"),
            reversed=Sum("amount_minor", filter=Q(status=PaymentStatus.REVERSED)),
        )
        .order_by("currency")
    )
    failures = (
        payments.filter(status=PaymentStatus.FAILED)
        .values("failure_code")
        .annotate(count=Count("pk"))
        .order_by("-count", "failure_code")
    )
    if player.msisdn:
        blocks = PlayerBlock.objects.filter(msisdn=player.msisdn)
    else:
        blocks = PlayerBlock.objects.filter(app=player.app, user_ref=player.user_ref)
    return PlayerSummary(
        payments=payments.count(),
        totals=[
            CurrencyTotals(row["currency"], row["charged"] or 0, row["refunded"] or 0, row["reversed"] or 0)
            for row in per_currency
        ],
        failure_codes=[(row["failure_code"] or "(none)", row["count"]) for row in failures],
        blocks=list(blocks.select_related("app").order_by("app__name")),
    )


def amount_bound(major: Decimal, *, lookup: str) -> Q:
    """Payments whose amount is `lookup` (gte, lte) `major` units of their own currency: each currency the price
    points are in compared in its minor units (¥100 is 100, £9.99 is 999)."""
    bound = Q(pk__in=[])
    for currency in sorted(set(PricePoint.objects.values_list("currency", flat=True))):
        minor = major.scaleb(currency_exponent(currency))
        # An amount between two minor units: `gte` starts at the next unit up, `lte` stops at the one below.
        whole = int(minor.to_integral_value(rounding=ROUND_CEILING if lookup == "gte" else ROUND_FLOOR))
        bound |= Q(currency=currency, **{f"amount_minor__{lookup}": whole})
    return bound


# What counts toward a number's monthly spend: what was charged and not given back, and what is being charged
# (so that a charge decided after another, still under way, counts it: subscriptions.services.caps).
SPENT = (PaymentStatus.SUCCEEDED, PaymentStatus.PARTIALLY_REFUNDED, PaymentStatus.REFUNDED)


def monthly_spend(*, msisdn: str, carrier: Carrier, currency: str, now: datetime) -> int:
    """Minor units charged to `msisdn` on `carrier` in the calendar month (UTC) of `now`, every app and kind of
    payment: the charges less their refunds, and the payments under way at their full amount. Reversed and
    failed ones count nothing.

    Reads one month's partition of the payments (the bounds on `created_at`), through its index on the MSISDN.
    """
    start, end = month_bounds(month_start(now.astimezone(UTC)))
    total = Payment.objects.filter(
        msisdn=msisdn,
        created_at__gte=start,
        created_at__lt=end,
        carrier=carrier,
        currency=currency,
        status__in=(*SPENT, *UNDECIDED_STATUSES),
    ).aggregate(spent=Sum(F("amount_minor") - F("refunded_minor")))["spent"]
    return int(total or 0)
