"""Reads whose SQL is built once per process answer as their queryset does: the same rows, the same related
objects, the same errors, the same locks; and a read after the first runs the SQL built then."""

import uuid
from typing import Any

import psycopg
import pytest
from django.db import connection, transaction
from django.db.transaction import TransactionManagementError
from django.test.utils import CaptureQueriesContext

from payments.models import Payment
from payments.selectors import payment_of_app
from payments.services.carrier_flow import load_payment, locked_payment
from playpay import compiled_reads
from playpay.compiled_reads import CompiledRead
from tests.concurrency import other_session
from tests.factories import PaymentFactory

pytestmark = pytest.mark.postgres


def _fields(instance: Any) -> dict[str, Any]:
    return {field.attname: getattr(instance, field.attname) for field in instance._meta.concrete_fields}


def _counted_builds(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, ...]]:
    """The filter names of each statement built from now on, in order."""
    builds: list[tuple[str, ...]] = []
    build = compiled_reads._build

    def counted(queryset: Any, filters: dict[str, Any]) -> Any:
        builds.append(tuple(sorted(filters)))
        return build(queryset, filters)

    monkeypatch.setattr(compiled_reads, "_build", counted)
    return builds


@pytest.mark.django_db
def test_a_compiled_read_gives_the_row_and_its_related_objects_as_the_queryset_does() -> None:
    payment = PaymentFactory.create(metadata={"level": 7, "tags": ["a", "é"]}, journey_id="j-1")
    PaymentFactory.create(app=payment.app, price_point=payment.price_point)  # another payment of the app
    read = CompiledRead(lambda: Payment.objects.select_related("app", "carrier", "price_point"))
    expected = Payment.objects.select_related("app", "carrier", "price_point").get(pk=payment.pk)
    for _ in range(2):  # the first read builds the SQL, the second runs what was built
        with CaptureQueriesContext(connection) as queries:
            found = read.get(pk=payment.pk, created_at__gte=payment.created_at)
            related = (found.app, found.carrier, found.price_point)
        assert len(queries) == 1  # the related objects came with the row
        assert _fields(found) == _fields(expected)
        assert found.metadata == {"level": 7, "tags": ["a", "é"]}  # the JSON field's converter ran
        assert [_fields(each) for each in related] == [
            _fields(expected.app),
            _fields(expected.carrier),
            _fields(expected.price_point),
        ]
        assert (found._state.adding, found._state.db) == (False, "default")
    found.user_ref = "saved again"
    found.save(update_fields=["user_ref"])  # a read instance saves as the queryset's would
    assert Payment.objects.get(pk=payment.pk).user_ref == "saved again"


@pytest.mark.django_db
def test_a_compiled_read_tells_no_row_and_several_rows_apart_as_get_does() -> None:
    first = PaymentFactory.create()
    PaymentFactory.create(app=first.app, price_point=first.price_point)
    read = CompiledRead(lambda: Payment.objects.all())
    for _ in range(2):
        with pytest.raises(Payment.DoesNotExist):
            read.get(pk=first.pk + 1000)
        with pytest.raises(Payment.MultipleObjectsReturned):
            read.get(app=first.app_id)
        assert read.get(pk=first.pk).pk == first.pk


@pytest.mark.django_db
def test_the_sql_is_built_once_for_a_set_of_filter_names_and_run_with_each_reads_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    builds = _counted_builds(monkeypatch)
    first, second = PaymentFactory.create(), PaymentFactory.create()
    read = CompiledRead(lambda: Payment.objects.all())
    assert [read.get(app=each.app_id, pk=each.pk).pk for each in (first, second, first)] == [
        first.pk,
        second.pk,
        first.pk,
    ]
    with pytest.raises(Payment.DoesNotExist):
        read.get(app=first.app_id, pk=second.pk)
    assert read.get(pk=second.pk).pk == second.pk
    assert builds == [("app", "pk"), ("pk",)]


@pytest.mark.django_db
def test_values_the_driver_does_not_take_as_they_are_read_through_the_queryset() -> None:
    payment = PaymentFactory.create()
    read = CompiledRead(lambda: Payment.objects.all())
    assert read.get(pk=str(payment.pk)).pk == payment.pk  # a text id: Django converts it
    assert read.get(user_ref="player-1", pk=payment.pk).pk == payment.pk
    assert read._statements == {}  # neither was built: both read through the queryset


@pytest.mark.django_db
def test_an_id_no_row_can_have_is_no_row_before_and_after_the_sql_is_built() -> None:
    payment = PaymentFactory.create()
    read = CompiledRead(lambda: Payment.objects.all())
    with pytest.raises(Payment.DoesNotExist):
        read.get(pk=2**63)  # past a bigint: Django builds no SQL for it
    assert read.get(pk=payment.pk).pk == payment.pk
    with pytest.raises(Payment.DoesNotExist):
        read.get(pk=2**63)


@pytest.mark.django_db
def test_a_base_queryset_with_values_of_its_own_reads_through_the_queryset(monkeypatch: pytest.MonkeyPatch) -> None:
    builds = _counted_builds(monkeypatch)
    first, second = PaymentFactory.create(), PaymentFactory.create()
    read = CompiledRead(lambda: Payment.objects.filter(user_ref="player-1"))
    assert read.get(pk=first.pk).pk == first.pk
    assert read._statements == {}
    assert read.get(pk=second.pk).pk == second.pk
    assert builds == [("pk",)]  # told once: later reads of the shape go to the queryset without building again


@pytest.mark.django_db
def test_the_api_reads_an_apps_payment_by_public_id_and_no_other_apps() -> None:
    payment = PaymentFactory.create()
    older = PaymentFactory.create(public_id=uuid.uuid4())  # a version 4 id: looked for in every month
    other = PaymentFactory.create()
    for _ in range(2):
        for own in (payment, older, other):
            assert payment_of_app(own.app, str(own.public_id)).pk == own.pk
        with pytest.raises(Payment.DoesNotExist):
            payment_of_app(payment.app, str(other.public_id))
        with pytest.raises(Payment.DoesNotExist):
            payment_of_app(payment.app, str(older.public_id))
        for not_ours in ("not-a-uuid", "ffffffff-ffff-7fff-bfff-ffffffffffff"):  # the latter: past year 9999
            with pytest.raises(Payment.DoesNotExist):
                payment_of_app(payment.app, not_ours)


@pytest.mark.django_db(transaction=True)
def test_a_compiled_locking_read_locks_the_row_and_needs_a_transaction_every_time() -> None:
    payment = PaymentFactory.create()
    for _ in range(2):
        with pytest.raises(TransactionManagementError):
            locked_payment(payment.pk)
        with transaction.atomic():
            assert locked_payment(payment.pk).pk == payment.pk
            with other_session() as session, pytest.raises(psycopg.errors.LockNotAvailable):
                session.execute("SELECT 1 FROM payments_payment WHERE id = %s FOR UPDATE NOWAIT", [payment.pk])
        with other_session() as session:  # the lock ended with the transaction
            session.execute("SELECT 1 FROM payments_payment WHERE id = %s FOR UPDATE NOWAIT", [payment.pk])
    assert load_payment(payment.pk).price_point_id == payment.price_point_id
