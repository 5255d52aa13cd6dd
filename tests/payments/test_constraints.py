"""Invariants held by PostgreSQL itself, whatever the code above it does."""

import pytest
from django.db import IntegrityError, transaction

from payments.models import Payment, PaymentIdempotencyKey, WebhookDelivery
from tests.conftest import Shop
from tests.factories import PaymentFactory

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]


def test_database_refuses_a_second_payment_with_the_same_key_for_an_app(shop: Shop) -> None:
    shop.create_payment(key="k1")
    original = Payment.objects.get()
    other = PaymentFactory.create(app=original.app, price_point=original.price_point)
    # The key table holds the key per app across the payments' months; a second claim of it is refused.
    with pytest.raises(IntegrityError), transaction.atomic():
        PaymentIdempotencyKey.objects.create(
            app=original.app, key="k1", payment=other, payment_created_at=other.created_at
        )


def test_database_refuses_non_positive_amounts_and_unknown_statuses(shop: Shop) -> None:
    shop.create_payment()
    for change in ({"amount_minor": 0}, {"status": "paid"}):
        with pytest.raises(IntegrityError), transaction.atomic():
            Payment.objects.update(**change)


def test_database_refuses_a_carrier_payout_above_the_price(shop: Shop) -> None:
    with pytest.raises(IntegrityError), transaction.atomic():
        type(shop.price_point).objects.filter(pk=shop.price_point.pk).update(carrier_payout_minor=100)


def test_database_refuses_a_webhook_delivery_naming_its_payment_without_its_month(shop: Shop) -> None:
    shop.create_payment()
    payment = Payment.objects.get()
    fields = {"app": payment.app, "event_type": "e", "payload": {}, "url": "https://x"}
    # bulk_create skips save(), which fills the month: the foreign key on (payment_id, payment_created_at)
    # would not check a row whose month is NULL, the check constraint refuses it.
    with pytest.raises(IntegrityError), transaction.atomic():
        WebhookDelivery.objects.bulk_create([WebhookDelivery(payment=payment, message_id="m-1", **fields)])
    delivery = WebhookDelivery.objects.create(message_id="m-2", **fields)
    with pytest.raises(IntegrityError), transaction.atomic():
        WebhookDelivery.objects.filter(pk=delivery.pk).update(payment=payment)
    WebhookDelivery.objects.filter(pk=delivery.pk).update(payment=payment, payment_created_at=payment.created_at)
    payment.delete()  # its deliveries keep their month, without their payment
    delivery.refresh_from_db()
    assert (delivery.payment_id, delivery.payment_created_at) == (None, payment.created_at)
