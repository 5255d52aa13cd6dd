"""The renewal engine of platform-managed carriers: each due period charged once, by a one-click payment.

`run_renewals` finds the subscriptions whose `next_charge_at` has come (the partial index
`subscription_due_idx`), locks a batch with `FOR UPDATE SKIP LOCKED` (a second engine running at the same
time takes other rows, and re-checks a row another run changed), and for each one either ends it (a
cancellation at the period's end, a retry window run out) or opens the charge of the period that contains
`now` (periods that ended unpaid before it are recorded as missed, never charged late): a one-click payment
at the price the player agreed to, queued for the carrier's own queue through the outbox, and its
`SubscriptionCharge` row, whose partial unique index refuses a second live charge of the period. The
payment's outcome comes back through `services.charges`. A run starts by sending the reminders of the
renewals coming next (`services.notices`).
"""

import logging
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Count, Max, Q, QuerySet
from django.utils import timezone

from carriers.models import Carrier, PricePoint
from payments.models import Payment, PaymentFlow, PaymentStatus
from payments.services.payments import open_payment
from subscriptions.models import (
    PAYMENT_METADATA_KEY,
    SPEND_CAP_FAILURE,
    Subscription,
    SubscriptionCharge,
    SubscriptionStatus,
)
from subscriptions.periods import index_at
from subscriptions.services.caps import CapBusy, within_spend_cap
from subscriptions.services.charges import expire, grace_end, period_bounds, renewal_failed
from subscriptions.services.notices import send_reminders
from subscriptions.services.notify import notify
from subscriptions.services.prices import agreed_price_available, declined_in_arrears, fallback_price
from subscriptions.services.state_machine import BILLED_STATUSES, transition
from subscriptions.services.subscriptions import (
    create_renewal_charge,
    end_cancelled_period,
    next_attempt_number,
    renewal_text,
)

logger = logging.getLogger(__name__)
ACTOR = "system"


# How long a renewal whose carrier or price point is switched off waits before it is looked at again.
PAUSED_RECHECK = timedelta(hours=1)
PAUSED_EXPIRY_REASON = "renewal not charged within the retry window: the agreed price cannot be charged"


def retry_window() -> timedelta:
    """How long after its first unpaid period's start a renewal may go unpaid (declined, or paused) before the
    subscription expires."""
    return timedelta(days=settings.SUBSCRIPTION_RETRY_DAYS)


@dataclass
class RenewalRun:
    charged: int = 0
    cancelled: int = 0
    suspended: int = 0
    expired: int = 0
    skipped: int = 0
    paused: int = 0
    missed: int = 0
    over_cap: int = 0
    reminded: int = 0
    reminders_skipped: int = 0
    batches: int = 0


CAP_BUSY_RECHECK = timedelta(minutes=1)
# How long after its paced moment a renewal's player stays entitled while it is sent and answered: the
# due-attempts job runs every 30 s, a carrier at its rate limit puts calls off, an answer takes its timeout.
PACED_ANSWER_MARGIN = timedelta(minutes=5)


@dataclass
class Pacer:
    """When each renewal of a run is sent to its carrier: at a random moment within
    `SUBSCRIPTION_RENEWAL_SPREAD_SECONDS` (jitter), the k-th of a carrier no sooner than k / pace seconds, the
    pace being `SUBSCRIPTION_RENEWAL_RATE_PERCENT` of the carrier's rate limit, counted from the run's start or,
    when an earlier run's renewals of that carrier still wait, from where their paced queue ends. So a million
    renewals due in the same minute neither burst at a carrier nor go beyond its rate limit (whose gateway
    check stays the hard limit), over runs in a row; two runs at the very same time each count from the queue
    they see. A window of 0 sends each at once."""

    start: datetime
    taken: Counter[int] = field(default_factory=Counter)
    bases: dict[int, datetime] = field(default_factory=dict)

    def send_at(self, carrier: Carrier) -> datetime | None:
        spread = settings.SUBSCRIPTION_RENEWAL_SPREAD_SECONDS
        if spread <= 0:
            return None
        if carrier.pk not in self.bases:
            self.bases[carrier.pk] = self._queue_end(carrier, spread)
        position = self.taken[carrier.pk]
        self.taken[carrier.pk] += 1
        pace = carrier.rate_limit_per_second * settings.SUBSCRIPTION_RENEWAL_RATE_PERCENT / 100
        queued = position / pace if pace > 0 else 0.0
        return self.bases[carrier.pk] + timedelta(seconds=queued + secrets.randbelow(spread * 1000) / 1000)

    def _queue_end(self, carrier: Carrier, spread: int) -> datetime:
        """Where this carrier's paced queue ends: the latest moment of its renewals still waiting to be sent
        (payments not started, whose first step is due later), less the jitter it may hold; the run's start
        when none waits."""
        latest = (
            Payment.objects.filter(carrier=carrier, status=PaymentStatus.CREATED, next_attempt_at__gt=self.start)
            .order_by("-next_attempt_at")
            .values_list("next_attempt_at", flat=True)
            .first()
        )  # the index payment_paced_idx: one probe a month
        return self.start if latest is None else max(self.start, latest - timedelta(seconds=spread))


def due_subscriptions(now: datetime) -> QuerySet[Subscription]:
    """What the engine charges now: never a carrier-managed subscription, whose carrier charges it (its
    `next_charge_at` is when it is overdue, `services.carrier_managed.check_overdue`)."""
    return Subscription.objects.filter(
        next_charge_at__lte=now, status__in=BILLED_STATUSES, carrier_managed=False
    ).order_by("next_charge_at")


def run_renewals(*, now: datetime, batch_size: int | None = None, max_seconds: float | None = None) -> RenewalRun:
    """Charge, in batches of `batch_size`, every subscription due at `now`; returns what was done.

    `max_seconds`: take no new batch once the run has lasted that long (the reminders before the renewals are
    not bounded by it), leaving what is still due to the next run. Each batch commits on its own, so stopping
    between two loses nothing."""
    if max_seconds is not None and max_seconds < 0:
        raise ValueError("max_seconds is 0 or more")
    started = time.monotonic()
    size = batch_size or settings.SUBSCRIPTION_RENEWAL_BATCH
    run = RenewalRun()
    # The reminders of the renewals coming next (monthly plans), once per period; before the renewals, so that
    # a renewal due now whose reminder was never sent (the engine was stopped) has it recorded as skipped.
    run.reminded, run.reminders_skipped = send_reminders(now=now, batch_size=size)
    pacer = Pacer(start=timezone.now())  # the real clock: the carrier is called then, whatever `now` says
    while True:
        with transaction.atomic():
            batch = list(
                due_subscriptions(now)
                .select_for_update(skip_locked=True, of=("self",))
                .select_related("app", "carrier__country", "plan", "price_point", "offer")[:size]
            )
            for subscription in batch:
                renew(subscription, now=now, run=run, pacer=pacer)
        run.batches += 1
        if len(batch) < size or (max_seconds is not None and time.monotonic() - started >= max_seconds):
            break
    return run


def renew(subscription: Subscription, *, now: datetime, run: RenewalRun, pacer: Pacer) -> None:
    """What a due, locked subscription needs now (inside the batch's transaction); its renewal is sent when
    `pacer` says."""
    first_unpaid = subscription.period_index + 1
    if subscription.status == SubscriptionStatus.ACTIVE and subscription.cancel_at_period_end:
        end_cancelled_period(subscription, actor=ACTOR, now=now)
        run.cancelled += 1
        return
    if subscription.status != SubscriptionStatus.ACTIVE:
        declined_since = _declined_since(subscription, first_unpaid)
        if now >= declined_since + retry_window():
            expire(subscription, actor=ACTOR, reason="renewal not charged within the retry window", at=now)
            run.expired += 1
            return
        if subscription.status == SubscriptionStatus.PAST_DUE and now >= grace_end(declined_since):
            transition(
                subscription,
                SubscriptionStatus.SUSPENDED,
                actor=ACTOR,
                reason="grace period over, renewal unpaid",
                at=now,
            )
            notify(subscription, "suspended", at=now)
            run.suspended += 1
    # Only the period that contains `now` is charged: the ones that ended unpaid meanwhile (the engine was
    # stopped, billing was switched off, a declined period's retries ran past its end) are recorded as missed.
    assert subscription.anchor_at is not None
    index = max(first_unpaid, index_at(subscription.anchor_at, subscription.plan.period, now))
    missed = _record_missed(subscription, first=first_unpaid, until=index, now=now)
    if missed is None:
        run.skipped += 1  # a charge of an earlier period awaits its outcome, which settles the subscription
        subscription.next_charge_at = None
        subscription.save(update_fields=["next_charge_at", "updated_at"])
        return
    run.missed += missed
    if not agreed_price_available(subscription):
        # Billing through this carrier or at the agreed price is switched off (or that price point's price
        # changed): nothing is charged, and the renewal is looked at again later (a declined one within its
        # retry window, after which it expires as unpaid). An active one is given the same window, from the
        # same start (its first unpaid period's): no renewal is paused for ever.
        deadline = _declined_since(subscription, first_unpaid) + retry_window()
        if now >= deadline:
            expire(subscription, actor=ACTOR, reason=PAUSED_EXPIRY_REASON, at=now)
            run.expired += 1
            return
        subscription.next_charge_at = min(now + PAUSED_RECHECK, deadline)
        subscription.save(update_fields=["next_charge_at", "updated_at"])
        run.paused += 1
        return
    start, end = period_bounds(subscription, index)
    # Downgrade billing: a retry after a decline for insufficient funds, at the offer's lower price where allowed.
    fallback = (
        fallback_price(subscription, first_unpaid=first_unpaid)
        if subscription.status != SubscriptionStatus.ACTIVE
        else None
    )
    price_point = fallback or subscription.price_point
    try:
        within_cap = within_spend_cap(
            msisdn=subscription.msisdn,
            carrier=subscription.carrier,
            amount_minor=price_point.amount_minor,
            currency=price_point.currency,
            now=now,
            wait=False,
        )
    except CapBusy:
        # Another charge of this number is being decided (an opt-in, another engine's batch): this renewal is
        # looked at again a minute later (not in this run's next batch). Waiting here, holding the batch's
        # other locks, could deadlock.
        subscription.next_charge_at = now + CAP_BUSY_RECHECK
        subscription.save(update_fields=["next_charge_at", "updated_at"])
        run.skipped += 1
        return
    if not within_cap:
        _refuse_over_cap(subscription, index=index, start=start, end=end, now=now, fallback=fallback is not None)
        run.over_cap += 1
        return
    send_at = pacer.send_at(subscription.carrier)
    if _open_charge(subscription, index=index, start=start, end=end, fallback=fallback, send_at=send_at):
        run.charged += 1
        if send_at is not None and subscription.status == SubscriptionStatus.ACTIVE:
            # The wait is the engine's, not the player's: entitled until the renewal is sent and answered (then
            # its outcome decides: the next period's end, or the grace period).
            until = send_at + PACED_ANSWER_MARGIN
            subscription.entitled_until = max(subscription.entitled_until or until, until)
    else:
        run.skipped += 1
    subscription.next_charge_at = None  # until the charge's outcome sets the next date
    subscription.save(update_fields=["next_charge_at", "entitled_until", "updated_at"])


def _declined_since(subscription: Subscription, first_unpaid: int) -> datetime:
    """The start of the first declined period of a subscription in arrears: its grace and retry window run
    from there (a later period may be the one retried now, the earlier ones missed)."""
    first_declined = (
        declined_in_arrears(subscription, first_unpaid)
        .order_by("period_index")
        .values_list("period_start", flat=True)
        .first()
    )
    return first_declined or period_bounds(subscription, first_unpaid)[0]


def _record_missed(subscription: Subscription, *, first: int, until: int, now: datetime) -> int | None:
    """Record periods `first` … `until - 1` (ended, unpaid) as missed, each told to the app once
    (`subscription.period_missed`: the row's unique index records a period missed once); returns how many were
    recorded now, or None when one of them has a charge awaiting its outcome (nothing is recorded then)."""
    if until <= first:
        return 0
    made = {
        row["period_index"]: row
        for row in subscription.charges.filter(period_index__gte=first, period_index__lt=until)
        .values("period_index")
        .annotate(
            last=Max("attempt"),
            pending=Count("pk", filter=Q(outcome=SubscriptionCharge.Outcome.PENDING)),
            closed=Count(
                "pk", filter=Q(outcome__in=[SubscriptionCharge.Outcome.SUCCEEDED, SubscriptionCharge.Outcome.MISSED])
            ),
        )
    }
    if any(row["pending"] for row in made.values()):
        return None
    rows = []
    for index in range(first, until):
        row = made.get(index)
        if row is not None and row["closed"]:
            continue
        start, end = period_bounds(subscription, index)
        rows.append(
            SubscriptionCharge(
                subscription=subscription,
                kind=SubscriptionCharge.Kind.RENEWAL,
                period_index=index,
                period_start=start,
                period_end=end,
                attempt=(row["last"] if row is not None else 0) + 1,
                outcome=SubscriptionCharge.Outcome.MISSED,
                settled_at=end,
            )
        )
    SubscriptionCharge.objects.bulk_create(rows)
    for missed in rows:
        notify(subscription, "period_missed", at=now, charge=missed)
    if rows:
        logger.info(
            "subscription %s: %d period(s) ended unpaid before they could be charged, recorded as missed",
            subscription.public_id,
            len(rows),
            extra={"subscription_id": str(subscription.public_id), "periods": [r.period_index for r in rows]},
        )
    return len(rows)


def _refuse_over_cap(
    subscription: Subscription, *, index: int, start: datetime, end: datetime, now: datetime, fallback: bool
) -> None:
    """The period's charge (at the `fallback` price or not) would take the number above its carrier's monthly
    spend cap: it is not sent, and is recorded as a failed charge (`spending_limit`, no payment), handled as a
    declined renewal (retry, grace)."""
    charge = SubscriptionCharge(
        subscription=subscription,
        kind=SubscriptionCharge.Kind.RENEWAL,
        period_index=index,
        period_start=start,
        period_end=end,
        attempt=next_attempt_number(subscription, index),
        outcome=SubscriptionCharge.Outcome.FAILED,
        failure_code=SPEND_CAP_FAILURE,
        fallback_price=fallback,
        settled_at=now,
    )
    logger.info(
        "subscription %s: period %d not charged, above the carrier's monthly spend cap",
        subscription.public_id,
        index,
        extra={"subscription_id": str(subscription.public_id), "period": index},
    )
    renewal_failed(subscription, charge, actor=ACTOR, at=now)


def _open_charge(
    subscription: Subscription,
    *,
    index: int,
    start: datetime,
    end: datetime,
    fallback: PricePoint | None,
    send_at: datetime | None,
) -> bool:
    """Create the period's renewal payment, at the agreed price (or the `fallback` one), sent to the carrier at
    `send_at` (at once when None), and its charge row; False when the period has a live charge."""
    price_point = fallback or subscription.price_point
    metadata: dict[str, Any] = {PAYMENT_METADATA_KEY: str(subscription.public_id), "period": index}
    if fallback is not None:
        metadata["fallback_price"] = True
    try:
        with transaction.atomic():
            payment = open_payment(
                app=subscription.app,
                user_ref=subscription.user_ref,
                msisdn=subscription.msisdn,
                carrier=subscription.carrier,
                price_point=price_point,
                flow=PaymentFlow.ONE_CLICK,
                actor=ACTOR,
                metadata=metadata,
                description=renewal_text(subscription, fallback=fallback),
                not_before=send_at,
            )
            create_renewal_charge(
                subscription, index=index, start=start, end=end, payment=payment, fallback=fallback is not None
            )
    except IntegrityError:
        # A live (pending or succeeded) charge of this period exists: its outcome settles the subscription.
        logger.warning(
            "subscription %s: period %d already has a live charge; none opened",
            subscription.public_id,
            index,
            extra={"subscription_id": str(subscription.public_id), "period": index},
        )
        return False
    return True
