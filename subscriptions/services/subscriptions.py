"""Opting in, confirming, cancelling and reading entitlement: what a game backend asks for through the API."""

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Max, QuerySet
from django.utils import timezone

from carriers.adapters import adapter_class, carrier_queue
from carriers.models import Carrier, PricePoint
from carriers.msisdn import normalize_msisdn
from carriers.services import resolve_carrier
from payments.models import Payment, PaymentFlow
from payments.services import outbox
from payments.services.carrier_flow import app_actor, load_payment, locked_payment
from payments.services.idempotency import (
    IdempotencyKey,
    KeyAlreadyClaimed,
    claim_key,
    expired_before,
    is_unique_violation,
)
from payments.services.payments import confirm_payment, expire_payment, open_payment, withdraw_payment
from playpay.money import format_money
from subscriptions.errors import IllegalSubscriptionTransition, PlanNotAvailable, SpendingCapReached
from subscriptions.models import (
    PAYMENT_METADATA_KEY,
    PLATFORM_MANAGED,
    Plan,
    PlanOffer,
    Subscription,
    SubscriptionCharge,
    SubscriptionStatus,
)
from subscriptions.services.caps import within_spend_cap
from subscriptions.services.notify import notify
from subscriptions.services.state_machine import FINAL_STATUSES, end, record_creation
from tenants.models import App

PERIOD_WORDS = {"daily": "day", "weekly": "week", "monthly": "month"}

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SubscriptionRequest:
    user_ref: str
    msisdn: str
    plan: str
    carrier: str | None = None
    journey_id: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)


def opt_in_text(plan: Plan, *, first: PricePoint, regular: PricePoint, app: App) -> str:
    """What the PIN message tells the player: the service, the price and the period (the regulatory terms)."""
    every = PERIOD_WORDS[plan.period]
    price = f"{format_money(regular.amount_minor, regular.currency)} per {every}"
    if first.pk != regular.pk:
        price = f"{format_money(first.amount_minor, first.currency)} for the first {every}, then {price}"
    return f"{app.name} {plan.name}: subscription, {price}, renewed until you cancel"


def carrier_manages_renewals(carrier: Carrier) -> bool:
    """Whether the carrier's protocol schedules and charges renewals itself (`services.carrier_managed`)."""
    return adapter_class(carrier.protocol).capabilities.managed_subscriptions


def _offer(*, app: App, carrier: Carrier, code: str) -> PlanOffer:
    offer = (
        PlanOffer.objects.filter(plan__app=app, plan__code=code, plan__is_active=True, carrier=carrier)
        .select_related("plan", "price_point", "first_period_price_point")
        .first()
    )
    if offer is None:
        raise PlanNotAvailable(f"The plan {code!r} is not offered on the carrier {carrier.slug!r}.")
    if not (carrier.supports_subscriptions and carrier.supports_pin and carrier.supports_one_click):
        raise PlanNotAvailable(f"The carrier {carrier.slug!r} does not take subscriptions.")
    if carrier.protocol not in PLATFORM_MANAGED and not carrier_manages_renewals(carrier):
        raise PlanNotAvailable(
            f"Subscriptions on the carrier {carrier.slug!r} ({carrier.protocol}) are not available yet."
        )
    if offer.plan.trial_days:
        raise PlanNotAvailable("Plans with a free trial need the carrier's consent flow, not available yet.")
    return offer


def release_expired_idempotency_key(*, app: App, key: str) -> bool:
    """Take an app's expired key (`idempotency`'s rule) back from the subscription it opened, for a new one:
    the old subscription's key is cleared. Call holding the key's new claim, so that no request holds its old
    one. False when the subscription is too young for its key to have expired."""
    expired = Subscription.objects.filter(app=app, idempotency_key=key, created_at__lt=expired_before())
    if not expired.update(idempotency_key="", updated_at=timezone.now()):
        return False
    logger.info("an expired idempotency key of app %s used again: its earlier subscription's key cleared", app.pk)
    return True


def subscribe(*, app: App, request: SubscriptionRequest, idempotency: IdempotencyKey) -> Subscription:
    """Open a subscription and start its double opt-in: a PIN payment of the first period, whose PIN message
    states the price and the period. It becomes active when that payment succeeds."""
    msisdn = normalize_msisdn(request.msisdn)
    carrier = resolve_carrier(msisdn=msisdn, carrier_slug=request.carrier)
    adapter_class(carrier.protocol)  # a protocol this deployment does not run is refused (503) before any row
    offer = _offer(app=app, carrier=carrier, code=request.plan)
    first = offer.first_period_price_point or offer.price_point
    actor = app_actor(app)
    with transaction.atomic():
        # The key first: a concurrent request with it waits here for ours, then finds it claimed.
        subscription = Subscription(
            app=app,
            user_ref=request.user_ref,
            msisdn=msisdn,
            carrier=carrier,
            plan=offer.plan,
            offer=offer,
            # What the PIN message states as the regular price: the renewals charge this, and only this.
            price_point=offer.price_point,
            amount_minor=offer.price_point.amount_minor,
            currency=offer.price_point.currency,
            carrier_managed=carrier_manages_renewals(carrier),
            idempotency_key=idempotency.key,
            journey_id=request.journey_id,
            metadata=request.metadata,
        )
        claim_key(idempotency, resource_id=subscription.public_id)
        # Then the number's cap lock, held until this transaction (and its opt-in payment) commits.
        if not within_spend_cap(
            msisdn=msisdn, carrier=carrier, amount_minor=first.amount_minor, currency=first.currency, now=timezone.now()
        ):
            cap = format_money(carrier.monthly_spend_cap_minor or 0, first.currency)
            raise SpendingCapReached(
                f"The first period ({format_money(first.amount_minor, first.currency)}) would take this number's "
                f"charges on {carrier.name} this month above the carrier's cap of {cap}."
            )
        try:
            with transaction.atomic():
                subscription.save()
        except IntegrityError as exc:  # the key is on an earlier subscription: freed if it expired, else taken
            if not is_unique_violation(exc):
                raise
            if not release_expired_idempotency_key(app=app, key=idempotency.key):
                raise KeyAlreadyClaimed(idempotency.key) from exc
            subscription.save()
        record_creation(subscription, actor=actor, at=timezone.now())
        payment = open_payment(
            app=app,
            user_ref=request.user_ref,
            msisdn=msisdn,
            carrier=carrier,
            price_point=first,
            flow=PaymentFlow.PIN,
            actor=actor,
            # The opt-in's payment steps (PIN sent, verified, charged) are in the journey too.
            journey_id=request.journey_id,
            metadata={PAYMENT_METADATA_KEY: str(subscription.public_id)},
            description=opt_in_text(offer.plan, first=first, regular=offer.price_point, app=app),
        )
        SubscriptionCharge.objects.create(
            subscription=subscription, kind=SubscriptionCharge.Kind.OPT_IN, period_index=0, payment=payment
        )
    return load_subscription(subscription.pk)


def load_subscription(subscription_id: int) -> Subscription:
    return subscriptions_with_relations().get(pk=subscription_id)


def subscriptions_with_relations() -> QuerySet[Subscription]:
    return Subscription.objects.select_related("app", "carrier", "plan", "price_point")


def opt_in_payment(subscription: Subscription) -> Payment:
    charge = subscription.charges.filter(kind=SubscriptionCharge.Kind.OPT_IN).order_by("-id").first()
    # Every subscription is created with its opt-in charge, which has its payment.
    assert charge is not None
    assert charge.payment_id is not None
    return load_payment(charge.payment_id)


def confirm_opt_in(*, subscription: Subscription, pin: str) -> Payment:
    """The player's PIN for the opt-in payment (the second of the double opt-in); as `confirm_payment`."""
    if subscription.status != SubscriptionStatus.PENDING_OPT_IN:
        raise IllegalSubscriptionTransition(
            f"Only a subscription waiting for its opt-in takes a PIN; this one is {subscription.status!r}.",
            subscription_status=subscription.status,
        )
    return confirm_payment(payment=opt_in_payment(subscription), pin=pin)


def cancel_subscription(
    *, subscription: Subscription, at_period_end: bool, reason: str, actor: str, now: datetime
) -> Subscription:
    """Cancel now (the player's entitlement ends now) or at the end of the paid period (it stays entitled
    until then, and that period is not renewed). A subscription not in a paid period is cancelled now.

    Cancelled now while a renewal is being charged: a payment not sent to the carrier yet is withdrawn in the
    same transaction (never sent); one already at the carrier keeps its course, and if it succeeds it is
    refunded and grants nothing (`services.charges`).
    """
    for attempt in range(CANCEL_ATTEMPTS):
        # Lock order: a payment, then its subscription (as a payment's transition does), never the reverse;
        # so the live renewals' payments are locked first, and the lot done again if a new one came meanwhile.
        pending = _live_renewal_payment_ids(subscription.pk)
        with transaction.atomic():
            payments = [locked_payment(payment_id) for payment_id in pending]
            locked = Subscription.objects.select_for_update(of=("self",)).select_related("plan").get(pk=subscription.pk)
            if _live_renewal_payment_ids(locked.pk) != pending and attempt + 1 < CANCEL_ATTEMPTS:
                continue
            pending_opt_in = cancel_locked(locked, at_period_end=at_period_end, reason=reason, actor=actor, now=now)
            if locked.carrier_managed and locked.carrier_reference:
                tell_carrier_of_cancellation(locked)
            if locked.status == SubscriptionStatus.CANCELLED:
                for payment in payments:
                    withdraw_payment(payment, actor=actor, reason="subscription cancelled before the renewal was sent")
        break
    if pending_opt_in:
        # After the commit: a payment's change locks the payment, then its subscription; never the reverse.
        expire_payment(payment_id=opt_in_payment(locked).pk, reason="subscription cancelled before opt-in")
    return load_subscription(locked.pk)


CANCEL_AT_CARRIER_TASK = "subscriptions.tasks.cancel_at_carrier"


def tell_carrier_of_cancellation(subscription: Subscription) -> None:
    """A carrier-managed subscription ended (or ends with its period) in PlayPay: its carrier must charge no
    period after this. Booked on the row, in the caller's transaction, due now by the clock the task reads, and
    sent after the commit (`services.carrier_managed.cancel_at_carrier`); until the carrier confirms, it is told
    again."""
    now = timezone.now()
    subscription.carrier_cancel_due_at, subscription.carrier_cancel_attempts = now, 0
    Subscription.objects.filter(pk=subscription.pk).update(carrier_cancel_due_at=now, carrier_cancel_attempts=0)
    outbox.enqueue(CANCEL_AT_CARRIER_TASK, queue=carrier_queue(subscription.carrier), subscription_id=subscription.pk)


# Tries at locking a subscription's live renewal payments before it; the last one goes on without a payment
# that came meanwhile (its success would be refunded).
CANCEL_ATTEMPTS = 3


def _live_renewal_payment_ids(subscription_id: int) -> list[int]:
    live = SubscriptionCharge.objects.filter(
        subscription_id=subscription_id,
        kind=SubscriptionCharge.Kind.RENEWAL,
        outcome=SubscriptionCharge.Outcome.PENDING,
    )
    return sorted(payment_id for payment_id in live.values_list("payment_id", flat=True) if payment_id is not None)


def end_cancelled_period(subscription: Subscription, *, actor: str, now: datetime) -> None:
    """A locked subscription whose cancellation was asked for at its period's end, that end come: cancelled."""
    subscription.cancelled_at = now
    end(
        subscription,
        SubscriptionStatus.CANCELLED,
        actor=actor,
        reason=f"cancelled at the period's end: {subscription.cancel_reason}",
        at=now,
        update_fields=("cancelled_at",),
    )
    notify(subscription, "cancelled", at=now)


def cancel_locked(locked: Subscription, *, at_period_end: bool, reason: str, actor: str, now: datetime) -> bool:
    """Cancel a locked subscription; True when it was waiting for its opt-in (whose payment is then expired)."""
    if locked.status in FINAL_STATUSES:
        raise IllegalSubscriptionTransition(
            f"The subscription is already {locked.status}.", subscription_status=locked.status
        )
    locked.cancel_reason = reason[:255]
    pending_opt_in = locked.status == SubscriptionStatus.PENDING_OPT_IN
    # A paid period that has ended is over: the renewal under way (at the carrier, or waiting for its paced
    # moment) is of the next period, which the player asks not to pay for. So it is cancelled now, and that
    # renewal withdrawn if not sent yet. The carrier's own renewals end with the overdue check, as below.
    period_over = (
        not locked.carrier_managed and locked.current_period_end is not None and locked.current_period_end <= now
    )
    if at_period_end and locked.status == SubscriptionStatus.ACTIVE and not period_over:
        locked.cancel_at_period_end = True
        if locked.carrier_managed:
            # The renewal engine leaves it alone: the overdue check ends it when its period does.
            locked.next_charge_at = locked.current_period_end
        locked.save(update_fields=["cancel_at_period_end", "cancel_reason", "next_charge_at", "updated_at"])
        return False
    locked.cancelled_at = now
    end(
        locked,
        SubscriptionStatus.CANCELLED,
        actor=actor,
        reason=f"cancelled: {reason}",
        at=now,
        update_fields=("cancel_reason", "cancelled_at"),
    )
    notify(locked, "cancelled", at=now)
    return pending_opt_in


@dataclass(frozen=True)
class Entitlement:
    entitled: bool
    until: datetime | None
    subscriptions: list[Subscription]


def entitlement(*, app: App, user_ref: str, now: datetime) -> Entitlement:
    """Whether the player is entitled now (by any subscription of this app), and until when."""
    current = list(
        subscriptions_with_relations()
        .filter(app=app, user_ref=user_ref, entitled_until__gt=now)
        .order_by("-entitled_until")
    )
    until = max((s.entitled_until for s in current if s.entitled_until is not None), default=None)
    return Entitlement(entitled=bool(current), until=until, subscriptions=current)


def renewal_text(subscription: Subscription, *, fallback: PricePoint | None = None) -> str:
    """What a renewal's charge tells the player: the terms of the opt-in, at the agreed price; charged at a
    `fallback` price (downgrade billing), that price for this period, then the agreed one."""
    price_point = subscription.price_point
    if fallback is None:
        return opt_in_text(subscription.plan, first=price_point, regular=price_point, app=subscription.app)
    every = PERIOD_WORDS[subscription.plan.period]
    return (
        f"{subscription.app.name} {subscription.plan.name}: subscription, "
        f"{format_money(fallback.amount_minor, fallback.currency)} for this {every} (reduced: balance too low), "
        f"then {format_money(price_point.amount_minor, price_point.currency)} per {every}, renewed until you cancel"
    )


def create_renewal_charge(
    subscription: Subscription,
    *,
    index: int,
    start: datetime,
    end: datetime,
    payment: Payment,
    fallback: bool = False,
) -> SubscriptionCharge:
    """The charge row of a renewal attempt of period `index` by `payment`; raises IntegrityError when the period
    has a live charge (pending, succeeded or missed)."""
    return SubscriptionCharge.objects.create(
        subscription=subscription,
        kind=SubscriptionCharge.Kind.RENEWAL,
        period_index=index,
        period_start=start,
        period_end=end,
        attempt=next_attempt_number(subscription, index),
        payment=payment,
        fallback_price=fallback,
    )


def next_attempt_number(subscription: Subscription, period_index: int) -> int:
    made = subscription.charges.filter(period_index=period_index).aggregate(last=Max("attempt"))["last"]
    return int(made or 0) + 1


STOP_REASON = "STOP from the player"


def live_subscriptions(
    *, msisdn: str, app: App | None = None, carrier: Carrier | None = None
) -> QuerySet[Subscription]:
    """What a STOP from the number (E.164) ends: its subscriptions that have not ended, in `app` (the app told
    of it) or on `carrier` (the carrier's SMS)."""
    live = Subscription.objects.filter(msisdn=msisdn).exclude(status__in=FINAL_STATUSES)
    if app is not None:
        live = live.filter(app=app)
    if carrier is not None:
        live = live.filter(carrier=carrier)
    return live


def stop_subscriptions(*, app: App, msisdn: str, plan: str | None, now: datetime) -> list[Subscription]:
    """The player sent STOP: cancel now every subscription of the number in this app (to `plan` only, when
    given) that has not ended; returns those cancelled. A second STOP finds none and changes nothing."""
    live = live_subscriptions(msisdn=normalize_msisdn(msisdn), app=app)
    if plan is not None:
        live = live.filter(plan__code=plan)
    cancelled = []
    for subscription in live.order_by("id"):
        try:
            cancelled.append(
                cancel_subscription(
                    subscription=subscription, at_period_end=False, reason=STOP_REASON, actor=app_actor(app), now=now
                )
            )
        except IllegalSubscriptionTransition:
            continue  # ended meanwhile (another STOP, the engine): nothing more to do
    return cancelled
