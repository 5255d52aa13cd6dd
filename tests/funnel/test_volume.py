"""The events table built for volume (PostgreSQL): monthly partitions, a default partition, the
maintenance job, de-duplication across partitions, and batches at the API's limit."""

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from funnel.models import FunnelEvent, FunnelEventKey, Journey
from funnel.partitions import DEFAULT_PARTITION, add_months, ensure_partitions, month_start, partition_name, partitions
from tests.conftest import Shop

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]
URL = "/api/v1/funnel/events/"


def event(event_id: str, at: datetime, *, journey: str = "j1", step: str = "store_opened") -> dict[str, Any]:
    return {"event_id": event_id, "journey_id": journey, "step": step, "occurred_at": at.isoformat()}


def located() -> dict[str, str]:
    """event_id -> the partition its row is stored in."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT event_id, tableoid::regclass::text FROM funnel_funnelevent")
        return dict(cursor.fetchall())


def post(shop: Shop, *events: dict[str, Any]) -> Any:
    response = shop.client.post(URL, {"events": list(events)}, format="json")
    assert response.status_code == 200, response.content
    return response.json()


def test_the_table_is_partitioned_by_month_with_a_default_partition() -> None:
    this_month = month_start(timezone.now())
    names = partitions()
    assert DEFAULT_PARTITION in names
    assert {partition_name(add_months(this_month, n)) for n in range(4)} <= set(names)
    with connection.cursor() as cursor:
        cursor.execute("SELECT relkind FROM pg_class WHERE relname = 'funnel_funnelevent'")
        assert cursor.fetchone() == ("p",)  # partitioned table


def test_events_land_in_their_month_and_late_ones_in_theirs(shop: Shop) -> None:
    now = timezone.now()
    last_month = add_months(month_start(now), -1)
    ensure_partitions(since=last_month)
    late = datetime(last_month.year, last_month.month, 28, 23, 59, tzinfo=UTC)
    body = post(shop, event("now", now - timedelta(minutes=1)), event("late", late))  # out of order
    assert body["accepted"] == 2
    assert located() == {"now": partition_name(month_start(now)), "late": partition_name(last_month)}
    # The journey starts at its earliest event, however late it arrived.
    assert Journey.objects.get(journey_id="j1").started_at == late


def test_an_event_older_than_every_partition_is_kept_in_the_default_partition(shop: Shop) -> None:
    long_ago = datetime(2019, 3, 1, 12, tzinfo=UTC)
    assert post(shop, event("old", long_ago))["accepted"] == 1
    assert located() == {"old": DEFAULT_PARTITION}


def test_the_maintenance_job_gives_a_month_in_the_default_partition_its_own_and_moves_its_rows(shop: Shop) -> None:
    month = add_months(month_start(timezone.now()), -2)
    assert partition_name(month) not in partitions()
    at = datetime(month.year, month.month, 15, tzinfo=UTC)
    post(shop, event("a", at), event("b", at + timedelta(hours=1), journey="j2"))
    assert set(located().values()) == {DEFAULT_PARTITION}
    created = ensure_partitions()
    assert partition_name(month) in created
    assert located() == {"a": partition_name(month), "b": partition_name(month)}
    assert ensure_partitions() == []  # nothing left to do
    # The moved rows are still found by their indexes.
    assert FunnelEvent.objects.filter(app=shop.app, journey_id="j2", occurred_at__gte=at).count() == 1


def test_the_job_creates_months_ahead() -> None:
    in_a_year = timezone.now() + timedelta(days=365)
    created = ensure_partitions(now=in_a_year, months_ahead=1)
    assert partition_name(month_start(in_a_year)) in created
    assert partition_name(add_months(month_start(in_a_year), 1)) in created


def test_the_job_is_scheduled() -> None:
    from django_celery_beat.models import PeriodicTask

    task = PeriodicTask.objects.get(name="create partitions ahead")
    assert task.task == "playpay.tasks.create_partitions_ahead"
    assert task.enabled


def test_a_repeated_event_id_is_dropped_even_with_a_timestamp_in_another_partition(shop: Shop) -> None:
    now = timezone.now()
    earlier = add_months(month_start(now), -1)
    ensure_partitions(since=earlier)
    assert post(shop, event("e1", now - timedelta(minutes=2)))["accepted"] == 1
    resent = datetime(earlier.year, earlier.month, 3, tzinfo=UTC)
    long_ago = datetime(2019, 1, 1, tzinfo=UTC)  # would go to the default partition
    body = post(shop, event("e1", resent), event("e1", long_ago), event("e2", resent))
    assert (body["accepted"], body["duplicates"]) == (1, 2)
    assert located() == {"e1": partition_name(month_start(now)), "e2": partition_name(earlier)}
    assert not FunnelEvent.objects.filter(occurred_at=long_ago).exists()
    assert set(FunnelEventKey.objects.values_list("event_id", flat=True)) == {"e1", "e2"}


def test_event_ids_are_per_app(shop: Shop, make_shop: Any) -> None:
    other = make_shop(prefix="4475")
    at = timezone.now() - timedelta(minutes=3)
    assert post(shop, event("same", at))["accepted"] == 1
    assert post(other, event("same", at))["accepted"] == 1
    assert FunnelEvent.objects.filter(event_id="same").count() == 2


def test_a_full_batch_keeps_the_good_events_and_reports_the_bad_by_index(shop: Shop) -> None:
    at = timezone.now() - timedelta(minutes=5)
    batch: list[Any] = [event(f"e{n}", at, journey=f"j{n // 6}") for n in range(1000)]
    batch[10] = {**batch[10], "occurred_at": "yesterday"}
    batch[500] = {**batch[500], "colour": "red"}
    batch[999] = "not an event"
    batch[700] = batch[3]  # a repeat inside the batch
    body = post(shop, *batch)
    assert [rejected["index"] for rejected in body["rejected"]] == [10, 500, 999]
    assert body["rejected"][0]["errors"]["occurred_at"][0].startswith("Datetime has wrong format.")
    assert body["rejected"][1]["errors"] == {"colour": ["This field is not accepted."]}
    assert (body["accepted"], body["duplicates"]) == (996, 1)
    assert FunnelEvent.objects.filter(app=shop.app).count() == 996
    assert Journey.objects.filter(app=shop.app).count() == 167


@pytest.mark.django_db(transaction=True)
def test_concurrent_batches_with_the_same_ids_store_each_event_once() -> None:
    import threading

    from django.db import connections

    from funnel.services import GameEvent, ingest_events
    from tests.factories import AppFactory

    app = AppFactory.create()
    at = timezone.now() - timedelta(minutes=1)
    # Overlapping batches, in opposite orders: each id is claimed by exactly one of them.
    batches = [
        [GameEvent(f"e{n}", f"j{n // 6}", "store_opened", at) for n in range(0, 600)],
        [GameEvent(f"e{n}", f"j{n // 6}", "store_opened", at) for n in reversed(range(300, 900))],
    ]
    start = threading.Barrier(len(batches))
    accepted: list[int] = []

    def send(batch: list[GameEvent]) -> None:
        try:
            start.wait()
            accepted.append(ingest_events(app=app, events=batch).accepted)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=send, args=(batch,)) for batch in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(accepted) == 900
    assert FunnelEvent.objects.filter(app=app).count() == 900
    assert Journey.objects.filter(app=app).count() == 150


@pytest.mark.postgres
@pytest.mark.django_db
def test_funnel_statements_run_under_their_own_time_and_memory_limits(settings) -> None:
    from django.db import connection, transaction

    from funnel.sql import set_analysis_limits

    settings.FUNNEL_STATEMENT_TIMEOUT_MS = 120_000
    settings.FUNNEL_WORK_MEM = "64MB"
    with transaction.atomic(), connection.cursor() as cursor:
        set_analysis_limits(cursor)
        cursor.execute(
            "SELECT current_setting('statement_timeout'), current_setting('work_mem'), current_setting('jit')"
        )
        assert cursor.fetchone() == ("2min", "64MB", "off")
