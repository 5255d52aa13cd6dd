"""Helpers for the finance tests: hand-made payments at chosen times, private files."""

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from carriers.models import Carrier
from payments.models import Payment, PaymentStatus, Reversal
from payments.services.refunds import request_reversal
from subscriptions.models import Subscription
from tenants.models import App
from tests.conftest import MSISDN, Shop
from tests.factories import AppFactory, CarrierFactory, CountryFactory, PaymentFactory, PricePointFactory
from tests.subscriptions.conftest import Subs, make_plan

MakePayment = Callable[..., Payment]


def reverse_paid(shop: Shop, payment_id: str, *, reason: str = "item not delivered") -> Reversal:
    """Reverse one of the shop's succeeded payments, with the carrier work it queues run."""
    with shop.after_commit(execute=True):
        reversal = request_reversal(payment=Payment.objects.get(public_id=payment_id), reason=reason, actor="staff:ops")
    return Reversal.objects.get(pk=reversal.pk)


def subscribe_and_renew(shop: Shop, *, key: str = "sub-1", renewals: int = 1) -> Subscription:
    """A subscription of the shop's player to a weekly plan on its carrier, opted in by PIN and renewed
    `renewals` times by the renewal engine, as a game and the scheduler make them."""
    shop.carrier.supports_subscriptions, shop.carrier.insufficient_funds_retry_minutes = True, ""
    shop.carrier.save(update_fields=["supports_subscriptions", "insufficient_funds_retry_minutes"])
    plan, offer = make_plan(shop, code=f"vip-{key}")
    subs = Subs(shop=shop, plan=plan, offer=offer)
    subscription = subs.active(key, user_ref=f"player-{key}")
    for _ in range(renewals):
        assert subscription.current_period_end is not None
        subs.renew(subscription.current_period_end)
        subscription.refresh_from_db()
    return subscription


@pytest.fixture(autouse=True)
def _reporting_files_in_tmp(settings: Any, tmp_path: Path) -> None:
    """Export files go under VAR_DIR/reporting; keep the test's own."""
    settings.VAR_DIR = tmp_path


@pytest.fixture
def make_payment(db: Any) -> MakePayment:
    """A payment as the payment flow leaves it, written directly: status, reference and time chosen by the test."""
    price_points: dict[int, Any] = {}

    def make(
        *,
        carrier: Carrier,
        reference: str = "",
        created: datetime,
        amount_minor: int = 99,
        currency: str = "GBP",
        status: str = PaymentStatus.SUCCEEDED,
        app: App | None = None,
        refunded_minor: int = 0,
    ) -> Payment:
        if carrier.pk not in price_points:
            price_points[carrier.pk] = PricePointFactory.create(carrier=carrier, code="finance", currency=currency)
        return PaymentFactory.create(
            app=app or AppFactory.create(),
            msisdn=MSISDN,
            carrier=carrier,
            price_point=price_points[carrier.pk],
            amount_minor=amount_minor,
            currency=currency,
            refunded_minor=refunded_minor,
            status=status,
            carrier_reference=reference,
            created_at=created,
        )

    return make


@pytest.fixture
def german_carrier(db: Any) -> Carrier:
    germany = CountryFactory.create(code="DE", name="Germany", currency="EUR", dialing_code="49")
    return CarrierFactory.create(country=germany)
