"""Helpers for the finance tests: hand-made payments at chosen times, staff clients by role, private files."""

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client

from carriers.models import Carrier
from payments.models import App, Payment, PaymentStatus
from tests.conftest import MSISDN
from tests.factories import AppFactory, CarrierFactory, CountryFactory, PricePointFactory

MakePayment = Callable[..., Payment]


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
        payment = Payment.objects.create(
            app=app or AppFactory.create(),
            user_ref="player-1",
            msisdn=MSISDN,
            carrier=carrier,
            price_point=price_points[carrier.pk],
            amount_minor=amount_minor,
            currency=currency,
            refunded_minor=refunded_minor,
            status=status,
            flow="one_click",
            carrier_reference=reference,
        )
        Payment.objects.filter(pk=payment.pk).update(created_at=created)  # auto_now_add cannot be set on create
        payment.refresh_from_db()
        return payment

    return make


@pytest.fixture
def german_carrier(db: Any) -> Carrier:
    germany = CountryFactory.create(code="DE", name="Germany", currency="EUR", dialing_code="49")
    return CarrierFactory.create(country=germany)


def staff_client(role: str) -> Client:
    """A signed-in member of a staff role (groups: payments 0010; their reporting rights: reporting 0002)."""
    user = User.objects.create_user(role, f"{role}@example.com", "pw-Str0ng-enough!", is_staff=True)
    user.groups.add(Group.objects.get(name=role))
    client = Client()
    client.force_login(user)
    return client
