"""Public ids of new payments and refunds are time-ordered (UUIDv7); ids made before (v4) keep working."""

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from payments.models import Payment, Refund
from playpay.ids import time_of
from tests.conftest import Shop

pytestmark = pytest.mark.django_db


def test_new_payments_and_refunds_get_uuid7_ids_in_creation_order(shop: Shop) -> None:
    before = timezone.now()
    ids = [uuid.UUID(shop.pay(key=f"k{n}", flow="one_click")["id"]) for n in range(3)]
    assert [public_id.version for public_id in ids] == [7, 7, 7]
    assert ids == sorted(ids)  # later is greater: the unique index grows at its right end
    made = time_of(ids[0])
    assert made is not None
    assert before - timedelta(seconds=1) <= made <= timezone.now()
    response = shop.client.post(
        f"/api/v1/payments/{ids[0]}/refunds/", {"reason": "goodwill"}, format="json", HTTP_IDEMPOTENCY_KEY="r1"
    )
    assert response.status_code in (201, 202), response.content
    assert Refund.objects.get().public_id.version == 7


def test_a_payment_made_with_a_random_id_before_is_still_found_by_it(shop: Shop) -> None:
    created = shop.pay(flow="one_click")
    old_id = uuid.uuid4()
    Payment.objects.filter(public_id=created["id"]).update(public_id=old_id)
    assert time_of(old_id) is None
    assert shop.get(str(old_id))["id"] == str(old_id)
