"""A service that locks a payment for its change locks that row only: not the carrier and app it reads with it,
which every other payment of that carrier or app needs at the same time."""

import psycopg
import pytest
from django.db import transaction

from payments.services.carrier_flow import locked_payment
from tests.concurrency import other_session
from tests.factories import PaymentFactory


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_payment_locked_for_its_change_leaves_its_carrier_app_and_their_other_payments_free() -> None:
    payment = PaymentFactory.create()
    other = PaymentFactory.create(price_point=payment.price_point)
    with transaction.atomic():
        locked = locked_payment(payment.pk)
        assert (locked.carrier, locked.app) == (payment.carrier, payment.app)  # read with it
        with other_session() as session:
            free = (
                ("carriers_carrier", payment.carrier_id),
                ("tenants_app", payment.app_id),
                ("payments_payment", other.pk),
            )
            for table, pk in free:
                session.execute(f"SELECT 1 FROM {table} WHERE id = %s FOR UPDATE NOWAIT", [pk])  # noqa: S608
            with pytest.raises(psycopg.errors.LockNotAvailable):
                session.execute("SELECT 1 FROM payments_payment WHERE id = %s FOR UPDATE NOWAIT", [payment.pk])
