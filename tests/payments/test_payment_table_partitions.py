"""The payments table at volume (PostgreSQL): partitioned by the month of `created_at`; the idempotency key per
app and the carrier reference per carrier unique across months through their key tables; a public id read
from its months only (v7) or from all (v4); a month of payments archived after its children; the migration of
an existing database keeps every row and key, both ways."""

import re
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import IntegrityError, connection, transaction
from django.db.models import QuerySet
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from carriers.adapters.base import CarrierResult, Notification, NotificationKind, Outcome
from carriers.errors import ErrorCode
from payments.figures import KEPT
from payments.models import (
    LedgerLine,
    Payment,
    PaymentCarrierReference,
    PaymentFlow,
    PaymentIdempotencyKey,
    PaymentStatus,
    PaymentStatusChange,
    Refund,
    WebhookDelivery,
)
from payments.partitions import ENTRIES, HISTORY, LINES, PAYMENTS, REFUNDS, REVERSALS
from payments.services.carrier_flow import apply_notification, record_start_result
from payments.services.idempotency import KeyAlreadyClaimed
from payments.services.payment_keys import (
    attach_carrier_reference,
    claim_idempotency_key,
    payment_by_carrier_reference,
)
from payments.services.refunds import request_refund
from payments.services.state_machine import record_creation, transition
from playpay.compiled_reads import CompiledRead
from playpay.ids import new_public_id
from playpay.partitions import IdMonths, add_months, month_start, read_archive
from tests.conftest import Shop, StaffClient
from tests.factories import PaymentFactory
from tests.payments.partition_helpers import Rows, kind_and_rows, latest_payments_migrations, migrate_to, names

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]


def partition_of(payment: Payment) -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT tableoid::regclass::text FROM payments_payment WHERE id = %s", [payment.pk])
        return str(cursor.fetchone()[0])


def months_ago(count: int, day: int = 3) -> datetime:
    month = add_months(month_start(timezone.now()), -count)
    for table in (PAYMENTS, HISTORY, ENTRIES, LINES, REFUNDS, REVERSALS):
        table.ensure(since=month)
    return datetime(month.year, month.month, day, tzinfo=UTC)


def as_committed() -> None:
    """Run the deferred checks now (foreign keys, balances), as a commit would."""
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")


def test_a_payment_lands_in_the_partition_of_its_month_with_its_keys_claimed(shop: Shop) -> None:
    response = shop.create_payment(key="k-month")
    assert response.status_code == 201, response.content
    payment = Payment.objects.get(public_id=response.json()["id"])
    assert partition_of(payment) == PAYMENTS.partition_name(month_start(payment.created_at))
    claimed = PaymentIdempotencyKey.objects.get(app=shop.app, key="k-month")
    assert (claimed.payment_id, claimed.payment_created_at) == (payment.pk, payment.created_at)
    assert payment.carrier_reference  # the simulator's first answer names its reference
    owner = PaymentCarrierReference.objects.get(carrier=payment.carrier, reference=payment.carrier_reference)
    assert (owner.payment_id, owner.payment_created_at) == (payment.pk, payment.created_at)
    as_committed()  # its history refers to it by (id, created_at)


def test_a_key_used_by_a_payment_of_another_month_is_refused_as_before(shop: Shop, settings) -> None:
    settings.IDEMPOTENCY_KEY_TTL_HOURS = 24 * 90  # kept 90 days: the key of two months ago has not expired
    older = PaymentFactory.create(
        app=shop.app, price_point=shop.price_point, idempotency_key="k-again", created_at=months_ago(2)
    )
    assert partition_of(older) == PAYMENTS.partition_name(month_start(older.created_at))
    response = shop.create_payment(key="k-again")
    # The key is taken, and no request of the app holds it any longer: as when the payment's own unique
    # constraint refused it, the request is told to try again later, and no payment is made.
    assert response.status_code == 409, response.content
    assert response.json()["code"] == "idempotency_request_in_flight"
    assert list(Payment.objects.values_list("pk", flat=True)) == [older.pk]


def test_an_expired_key_of_a_payment_of_another_month_goes_to_the_new_payment(shop: Shop) -> None:
    older = PaymentFactory.create(
        app=shop.app, price_point=shop.price_point, idempotency_key="k-expired", created_at=months_ago(2)
    )
    response = shop.create_payment(key="k-expired")  # kept 48 hours by default: expired long ago
    assert response.status_code == 201, response.content
    newer = Payment.objects.get(public_id=response.json()["id"])
    assert PaymentIdempotencyKey.objects.get(key="k-expired").payment_id == newer.pk
    assert set(Payment.objects.values_list("pk", "idempotency_key")) == {
        (older.pk, "k-expired"),
        (newer.pk, "k-expired"),
    }


def test_the_database_refuses_the_same_key_for_two_payments_of_different_months() -> None:
    older = PaymentFactory.create(idempotency_key="k-twice", created_at=months_ago(5))
    newer = PaymentFactory.create(app=older.app, price_point=older.price_point)
    newer.idempotency_key = "k-twice"
    with pytest.raises(KeyAlreadyClaimed), transaction.atomic():
        claim_idempotency_key(newer)
    assert PaymentIdempotencyKey.objects.get(key="k-twice").payment_id == older.pk


def test_a_carrier_reference_given_to_a_second_payment_stays_with_the_first(caplog: pytest.LogCaptureFixture) -> None:
    first = PaymentFactory.create(flow=PaymentFlow.PIN, carrier_reference="ref-1", created_at=months_ago(3))
    second = PaymentFactory.create(flow=PaymentFlow.PIN, price_point=first.price_point)
    record_creation(second, actor="test")
    record_start_result(payment_id=second.pk, result=CarrierResult(outcome=Outcome.PIN_SENT, carrier_reference="ref-1"))
    second.refresh_from_db()
    assert second.status == PaymentStatus.PIN_SENT  # the flow goes on
    assert second.carrier_reference == ""  # without the reference another payment holds
    assert "carrier reference already belongs to another payment" in caplog.text
    owner = PaymentCarrierReference.objects.get(carrier=first.carrier, reference="ref-1")
    assert (owner.payment_id, owner.payment_created_at) == (first.pk, first.created_at)
    with pytest.raises(IntegrityError), transaction.atomic():
        PaymentCarrierReference.objects.create(
            carrier=first.carrier, reference="ref-1", payment=second, payment_created_at=second.created_at
        )


def test_a_new_carrier_reference_of_a_payment_replaces_its_earlier_one() -> None:
    payment = PaymentFactory.create(flow=PaymentFlow.PIN, carrier_reference="ref-a", created_at=months_ago(2))
    other = PaymentFactory.create(flow=PaymentFlow.PIN, price_point=payment.price_point, carrier_reference="ref-x")
    assert payment_by_carrier_reference(carrier=payment.carrier, reference="ref-a") == payment

    assert attach_carrier_reference(payment, "ref-b")

    owned = PaymentCarrierReference.objects.filter(carrier=payment.carrier).values_list("reference", "payment_id")
    assert set(owned) == {("ref-b", payment.pk), ("ref-x", other.pk)}  # the earlier one no longer names it
    assert payment_by_carrier_reference(carrier=payment.carrier, reference="ref-a") is None
    assert payment_by_carrier_reference(carrier=payment.carrier, reference="ref-b") == payment
    payment.carrier_reference = "ref-b"
    assert attach_carrier_reference(payment, "ref-b")  # the same again: kept
    assert attach_carrier_reference(payment, "ref-x") is False  # another payment's: refused, its own kept
    assert set(owned) == {("ref-b", payment.pk), ("ref-x", other.pk)}


def test_a_callback_naming_a_carrier_reference_finds_its_payment_in_its_month() -> None:
    payment = PaymentFactory.create(flow=PaymentFlow.PIN, created_at=months_ago(4))
    record_creation(payment, actor="test")
    record_start_result(payment_id=payment.pk, result=CarrierResult(outcome=Outcome.PIN_SENT, carrier_reference="r-9"))
    callback = Notification(
        notification_id="n-1",
        kind=NotificationKind.PAYMENT,
        outcome=Outcome.FAILED,
        carrier_reference="r-9",
        error_code=ErrorCode.REJECTED,
    )
    assert apply_notification(carrier=payment.carrier, notification=callback) == "pin_sent -> failed"
    unknown = Notification(
        notification_id="n-2", kind=NotificationKind.PAYMENT, outcome=Outcome.SUCCEEDED, carrier_reference="r-0"
    )
    assert apply_notification(carrier=payment.carrier, notification=unknown) == "ignored: unknown payment"


def partitions_read(queryset: QuerySet[Payment]) -> set[str]:
    """The payments' partitions the query's plan reads."""
    return set(re.findall(r"payments_payment_(?:p\d{4}_\d{2}|default)", str(queryset.explain())))


def test_a_v7_public_id_is_read_from_its_months_and_a_v4_one_from_all(shop: Shop) -> None:
    older = PaymentFactory.create(app=shop.app, price_point=shop.price_point, created_at=months_ago(6, day=15))
    legacy = PaymentFactory.create(app=shop.app, price_point=shop.price_point, public_id=uuid.uuid4())
    assert older.public_id.version == 7
    for payment in (older, legacy):
        assert shop.get(str(payment.public_id))["id"] == str(payment.public_id)
    assert partitions_read(Payment.objects.with_public_id(older.public_id)) == {
        PAYMENTS.partition_name(month_start(older.created_at))
    }
    assert partitions_read(Payment.objects.with_public_id(legacy.public_id)) == set(PAYMENTS.partitions())
    # An id whose time names another month than its payment's is not looked for elsewhere.
    misdated = PaymentFactory.create(
        app=shop.app, price_point=shop.price_point, public_id=new_public_id(older.created_at)
    )
    assert not Payment.objects.with_public_id(misdated.public_id).exists()
    assert shop.client.get(f"/api/v1/payments/{misdated.public_id}/").status_code == 404
    assert shop.client.get(f"/api/v1/payments/{'-' * 36}/").status_code == 404
    # A version 7 id whose time is past what a date holds: no payment of ours, not an error.
    assert shop.client.get("/api/v1/payments/ffffffff-ffff-7fff-bfff-ffffffffffff/").status_code == 404


def test_a_read_by_id_alone_names_the_months_that_hold_it_and_finds_rows_made_since(shop: Shop) -> None:
    older = PaymentFactory.create(app=shop.app, price_point=shop.price_point, created_at=months_ago(6, day=15))
    PaymentFactory.create(app=shop.app, price_point=shop.price_point)  # the newest month with rows: this one
    months = IdMonths(PAYMENTS)
    filters, named = months.filters(older.pk)
    narrowed = Payment.objects.filter(**filters)
    assert named
    assert partitions_read(narrowed) == {PAYMENTS.partition_name(month_start(older.created_at))}
    assert months.get(Payment.objects.select_for_update(), older.pk) == older
    # Made after the snapshot: looked for from the newest month with rows on, where a new payment is.
    fresh = PaymentFactory.create(app=shop.app, price_point=shop.price_point)
    filters, named = months.filters(fresh.pk)
    narrowed = Payment.objects.filter(**filters)
    assert named
    assert PAYMENTS.partition_name(month_start(older.created_at)) not in partitions_read(narrowed)
    assert months.get(Payment.objects.all(), fresh.pk) == fresh
    # Made after the snapshot in an older month (a backdated import): the named months miss it, every month
    # is read instead.
    backdated = PaymentFactory.create(app=shop.app, price_point=shop.price_point, created_at=months_ago(6, day=16))
    assert not Payment.objects.filter(**months.filters(backdated.pk)[0]).exists()
    assert months.get(Payment.objects.all(), backdated.pk) == backdated
    # A read whose SQL is built once falls back alike.
    months.filters(older.pk)  # a new snapshot, taken before the next backdated row
    backdated_too = PaymentFactory.create(app=shop.app, price_point=shop.price_point, created_at=months_ago(6, day=17))
    assert months.get(CompiledRead(lambda: Payment.objects.all()), backdated_too.pk) == backdated_too
    for rows in (Payment.objects.all(), CompiledRead(lambda: Payment.objects.all())):
        with pytest.raises(Payment.DoesNotExist):
            months.get(rows, backdated.pk + 1000)


def refunded_with_a_webhook(payment: Payment, *, message_id: str) -> None:
    """The payment charged, then refunded by the platform at once (its carrier cannot refund), and a webhook
    delivery of it queued: a row in each table that refers to a payment."""
    payment.carrier.supports_refund = False
    payment.carrier.save()
    record_creation(payment, actor="test")
    with transaction.atomic():
        locked = Payment.objects.select_for_update().get(pk=payment.pk)
        transition(locked, PaymentStatus.CHARGING, actor="test")
        transition(locked, PaymentStatus.SUCCEEDED, actor="test")
    request_refund(payment=Payment.objects.get(pk=payment.pk), amount_minor=None, reason="goodwill", actor="test")
    WebhookDelivery.objects.create(
        app=payment.app, payment=payment, message_id=message_id, event_type="e", payload={}, url="https://x"
    )


def test_a_month_of_payments_is_archived_after_its_children_with_its_keys(shop: Shop, tmp_path: Path) -> None:
    created_at = months_ago(14)
    month = month_start(created_at)
    payment = PaymentFactory.create(
        app=shop.app,
        price_point=shop.price_point,
        flow=PaymentFlow.ONE_CLICK,
        created_at=created_at,
        idempotency_key="k-archived",
        carrier_reference="ref-archived",
    )
    refunded_with_a_webhook(payment, message_id="m-1")
    as_committed()
    with pytest.raises(CommandError, match="then payments"):
        call_command(
            "archive_partitions", "--table", PAYMENTS.table, "--older-than-days", "365", "--dir", str(tmp_path)
        )
    assert Payment.objects.filter(pk=payment.pk).exists()
    assert PaymentIdempotencyKey.objects.filter(key="k-archived").exists()  # rolled back with the refusal
    for table in (LINES, ENTRIES, REFUNDS, REVERSALS, HISTORY):
        call_command("archive_partitions", "--table", table.table, "--older-than-days", "365", "--dir", str(tmp_path))
    archived = PAYMENTS.archive(month, tmp_path)
    assert [row["public_id"] for row in read_archive(archived.path)] == [str(payment.public_id)]
    assert not Payment.objects.filter(pk=payment.pk).exists()
    assert not PaymentIdempotencyKey.objects.filter(key="k-archived").exists()
    assert not PaymentCarrierReference.objects.filter(reference="ref-archived").exists()
    delivery = WebhookDelivery.objects.get(message_id="m-1")
    assert (delivery.payment_id, delivery.payment_created_at) == (None, None)
    as_committed()


TABLES = ("payments_payment", "payments_paymentstatuschange", "payments_refund", "payments_webhookdelivery")


def tables_state() -> dict[str, tuple[str, Rows, list[str]]]:
    """Per table: its kind (r plain, p partitioned), its rows, and its foreign keys to the payments."""
    keys = (
        "SELECT conname || ' ' || pg_get_constraintdef(oid) FROM pg_constraint WHERE contype = 'f' "
        "AND conrelid = %s::regclass AND confrelid = 'payments_payment'::regclass AND conparentid = 0 ORDER BY 1"
    )
    # Only the webhook deliveries' payment_created_at is new with the payments' partitions; the ledger figures
    # a payment keeps came later (payments 0028), and leave with a migration back to before the partitions.
    new_columns = {"payments_webhookdelivery": ("payment_created_at",), "payments_payment": KEPT}
    return {
        table: (*kind_and_rows(table, leaving_out=new_columns.get(table, ())), names(keys, table)) for table in TABLES
    }


@pytest.mark.django_db(transaction=True)
def test_migrating_payments_keeps_rows_ids_and_keys_both_ways(shop: Shop) -> None:
    before = [("payments", "0021_refunds_reversals_partitioned_by_payment_month")]
    latest = latest_payments_migrations()

    old = PaymentFactory.create(  # before every partition: the default one
        app=shop.app,
        price_point=shop.price_point,
        created_at=datetime(2019, 6, 1, tzinfo=UTC),
        idempotency_key="k-old",
        carrier_reference="ref-old",
    )
    recent = PaymentFactory.create(app=shop.app, price_point=shop.price_point, idempotency_key="k-recent")
    record_creation(old, actor="test")
    refunded_with_a_webhook(recent, message_id="m-2")
    partitioned = tables_state()
    assert {kind for kind, _, _ in partitioned.values()} == {"p", "r"}
    assert partitioned["payments_payment"][0] == "p"
    assert all("(payment_id, payment_created_at)" in key for _, _, keys in partitioned.values() for key in keys)
    try:
        migrate_to(before)
        plain = tables_state()
        assert plain["payments_payment"][:2] == ("r", partitioned["payments_payment"][1])
        for table in TABLES[1:]:
            assert plain[table][1] == partitioned[table][1]
            assert [key.split()[0] for key in plain[table][2]] == [key.split()[0] for key in partitioned[table][2]]
            assert all("FOREIGN KEY (payment_id) REFERENCES payments_payment(id)" in key for key in plain[table][2])
        with connection.cursor() as cursor:
            cursor.execute("SELECT to_regclass('payments_paymentidempotencykey')")
            assert cursor.fetchone()[0] is None
            # A carrier that gave a reference twice, before the key table: the oldest payment keeps it.
            cursor.execute("UPDATE payments_payment SET carrier_reference = 'ref-old' WHERE id = %s", [recent.pk])
        migrate_to(latest)
        assert tables_state()["payments_refund"] == partitioned["payments_refund"]
        assert tables_state()["payments_payment"][2] == partitioned["payments_payment"][2]
        assert partition_of(old) == PAYMENTS.default_partition
        assert partition_of(recent) == PAYMENTS.partition_name(month_start(recent.created_at))
        keys = PaymentIdempotencyKey.objects.values_list("key", "payment_id", "payment_created_at")
        assert sorted(keys) == [("k-old", old.pk, old.created_at), ("k-recent", recent.pk, recent.created_at)]
        references = PaymentCarrierReference.objects.values_list("reference", "payment_id")
        assert list(references) == [("ref-old", old.pk)]
        assert WebhookDelivery.objects.get(message_id="m-2").payment_created_at == recent.created_at
        assert PaymentFactory.create(app=shop.app, price_point=shop.price_point).pk > recent.pk  # the sequence goes on
        as_committed()
    finally:
        migrate_to(latest)


def test_support_finds_a_payment_and_its_refunds_by_public_id_and_sees_its_months_rows(
    shop: Shop, staff_client: StaffClient
) -> None:
    older = PaymentFactory.create(app=shop.app, price_point=shop.price_point, created_at=months_ago(2))
    other = PaymentFactory.create(app=shop.app, price_point=shop.price_point)
    record_creation(older, actor="app:history-of-older")
    record_creation(other, actor="app:history-of-other")
    support = staff_client("superuser")
    # The search lands on the one payment it finds.
    found = support.get("/admin/payments/payment/", {"q": str(older.public_id)})
    assert found["Location"] == f"/admin/payments/payment/{older.pk}/change/"
    legacy = PaymentFactory.create(app=shop.app, price_point=shop.price_point, public_id=uuid.uuid4())
    found = support.get("/admin/payments/payment/", {"q": str(legacy.public_id)})
    assert found["Location"] == f"/admin/payments/payment/{legacy.pk}/change/"
    page = support.get(f"/admin/payments/payment/{older.pk}/change/").content.decode()
    assert "app:history-of-older" in page
    assert "app:history-of-other" not in page


def test_a_month_with_a_refund_the_carrier_has_not_confirmed_stays_until_it_settles(shop: Shop, tmp_path: Path) -> None:
    payment = PaymentFactory.create(
        app=shop.app, price_point=shop.price_point, flow=PaymentFlow.ONE_CLICK, created_at=months_ago(14)
    )
    payment.carrier.supports_refund = True
    payment.carrier.save()
    record_creation(payment, actor="test")
    with transaction.atomic():
        locked = Payment.objects.select_for_update().get(pk=payment.pk)
        transition(locked, PaymentStatus.CHARGING, actor="test")
        transition(locked, PaymentStatus.SUCCEEDED, actor="test")
    refund = request_refund(payment=Payment.objects.get(pk=payment.pk), amount_minor=None, reason="r", actor="test")
    assert refund.status == Refund.Status.PENDING  # asked of the carrier, no answer yet
    as_committed()
    lines_before = LedgerLine.objects.filter(payment_created_at=payment.created_at).count()

    for table in (LINES, PAYMENTS):
        with pytest.raises(CommandError, match="1 row\\(s\\) of the month are not settled"):
            call_command(
                "archive_partitions", "--table", table.table, "--older-than-days", "365", "--dir", str(tmp_path)
            )
    assert LedgerLine.objects.filter(payment_created_at=payment.created_at).count() == lines_before > 0
    assert LINES.detached() == []
    assert list(tmp_path.iterdir()) == []

    Refund.objects.filter(pk=refund.pk).update(status=Refund.Status.FAILED)
    call_command("archive_partitions", "--table", LINES.table, "--older-than-days", "365", "--dir", str(tmp_path))
    assert not LedgerLine.objects.filter(payment_created_at=payment.created_at).exists()


def test_the_payment_page_reads_its_history_and_refunds_once_whatever_their_number(
    staff_client: StaffClient,
) -> None:
    payment = PaymentFactory.create(created_at=months_ago(2))
    client = staff_client("superuser")
    url = reverse("admin:payments_payment_change", args=[payment.pk])

    def add_rows(count: int) -> None:
        for _ in range(count):
            PaymentStatusChange.objects.create(
                payment=payment, payment_created_at=payment.created_at, to_status="pending", actor="test"
            )
            Refund.objects.create(
                payment=payment,
                payment_created_at=payment.created_at,
                amount_minor=1,
                currency=payment.currency,
                reason="r",
                requested_by="staff:x",
            )

    def statements() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert client.get(url).status_code == 200
        return len(queries)

    add_rows(1)
    statements()  # the first request after signing in does more (the session's)
    few = statements()
    add_rows(5)
    assert statements() == few
