"""Carrier-call rollups: the catalog's carrier-calls dataset answers the same from the rollups as from the journal,
on random calls over days and months, after late records, and past the carrier calls' retention."""

import importlib
import random
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from journal.services import Kind, build
from journal.store import journal_store
from playpay.celery import app as celery_app
from reporting.models import CarrierCallRollup, CarrierCallRollupState, Dataset, DatasetField
from reporting.services import call_rollups
from reporting.services.datasets import DatasetQuery, QueryResult, run_query
from tests.reporting.answers import assert_same

pytestmark = [pytest.mark.django_db(databases=["default", "journal"]), pytest.mark.postgres]

seed_module = importlib.import_module("reporting.migrations.0004_seed_catalog")

CARRIERS = ["de-one", "de-two", "jp-one", ""]
OPERATIONS = ["charge", "refund", "status", None]
OUTCOMES = ["succeeded", "failed", "pending", None]
CODES = ["insufficient_funds", "timeout", "", None]


@pytest.fixture
def carrier_calls(db: Any) -> Dataset:
    seed_module.seed_datasets(Dataset, DatasetField)
    return Dataset.objects.prefetch_related("fields").get(slug="carrier-calls")


def write_calls(
    rng: random.Random, now: datetime, *, count: int, days: int, at: datetime | None = None, twice: bool = False
) -> None:
    """Carrier calls over the last `days` days (or all at `at`), with fields missing, empty or null now and then;
    the first of them shipped twice when `twice` (the spool delivers at least once; the journal stores it once)."""
    documents = []
    for _ in range(count):
        data: dict[str, Any] = {}
        if (operation := rng.choice(OPERATIONS)) is not None:
            data["operation"] = operation
        result: dict[str, Any] = {"transport_failed": rng.choice([True, False, None])}
        if (outcome := rng.choice(OUTCOMES)) is not None:
            result["outcome"] = outcome
        result["error_code"] = rng.choice(CODES)
        data["result"] = result
        if rng.random() < 0.8:
            data["latency_ms"] = rng.choice([3, 120, 999, 30_000])
        document = build(Kind.CARRIER_CALL, data, carrier=rng.choice(CARRIERS))
        moment = at or now - timedelta(seconds=rng.randrange(days * 24 * 3600))
        document["occurred_at"] = moment.isoformat()
        documents.append(document)
    other = build(Kind.API_REQUEST, {"latency_ms": 5000}, carrier="de-one")  # another kind: never counted
    journal_store().write([*documents, other, *documents[:1] * twice])


def random_queries(rng: random.Random, dataset: Dataset, now: datetime, *, days: int, count: int) -> list[DatasetQuery]:
    fields = list(dataset.fields.all())
    dimensions = [f.name for f in fields if f.role == "dimension"]
    measures = [f.name for f in fields if f.role == "measure"]
    queries = []
    for _ in range(count):
        since = now - timedelta(seconds=rng.randrange(days * 24 * 3600))
        until = rng.choice([now, since + timedelta(seconds=rng.randrange(1, days * 12 * 3600))])
        queries.append(
            DatasetQuery(
                measures=tuple(rng.sample(measures, rng.randint(1, len(measures)))),
                group_by=tuple(rng.sample(dimensions, rng.randint(0, 2))),
                filters=rng.choice([{}, {"carrier": ("de-one", "jp-one")}, {"outcome": ("failed",)}]),
                since=since,
                until=until,
                timezone=rng.choice(["UTC", "Europe/Paris"]),
            )
        )
    return queries


def answers(dataset: Dataset, queries: list[DatasetQuery]) -> list[QueryResult]:
    return [run_query(dataset=dataset, query=query) for query in queries]


def raw_answers(dataset: Dataset, queries: list[DatasetQuery]) -> list[QueryResult]:
    """The same queries with the rollups forgotten (then read from the journal), and the rollups rebuilt."""
    call_rollups.forget_carrier_call_rollups()
    try:
        return answers(dataset, queries)
    finally:
        call_rollups.catch_up_carrier_call_rollups()


@pytest.mark.parametrize("seed", [1, 2])
def test_rollup_answers_equal_the_journals_on_random_calls_over_days(carrier_calls: Dataset, seed: int) -> None:
    rng = random.Random(seed)
    now = timezone.now()
    write_calls(rng, now, count=300, days=5)
    call_rollups.catch_up_carrier_call_rollups()
    assert CarrierCallRollup.objects.filter(tier="day").exists()
    queries = random_queries(rng, carrier_calls, now, days=6, count=12)
    assert_same(answers(carrier_calls, queries), raw_answers(carrier_calls, queries))


def test_rollup_answers_equal_the_journals_over_months(carrier_calls: Dataset) -> None:
    """Whole UTC months from monthly rows, whole days at their edges, hours and the current hour from records."""
    rng = random.Random(3)
    now = timezone.now()
    write_calls(rng, now, count=400, days=100)
    call_rollups.catch_up_carrier_call_rollups()
    assert CarrierCallRollup.objects.filter(tier="month").exists()
    queries = random_queries(rng, carrier_calls, now, days=100, count=8)
    dashboard = ("calls", "avg_latency_ms", "max_latency_ms", "failed_calls")
    queries.append(DatasetQuery(measures=dashboard, group_by=("carrier",), since=now - timedelta(days=95)))
    queries.append(DatasetQuery(measures=dashboard, since=now - timedelta(days=80, minutes=7), until=now))
    assert_same(answers(carrier_calls, queries), raw_answers(carrier_calls, queries))


def test_late_records_of_rolled_up_hours_show_after_the_next_refresh(carrier_calls: Dataset) -> None:
    rng = random.Random(4)
    now = timezone.now()
    write_calls(rng, now, count=100, days=3)
    call_rollups.catch_up_carrier_call_rollups()
    query = DatasetQuery(
        measures=("calls", "failed_calls", "max_latency_ms"), group_by=("carrier",), since=now - timedelta(days=4)
    )
    before = run_query(dataset=carrier_calls, query=query)
    # Shipped late by the spool: calls of two days ago, and one of them twice (delivery is at least once): the
    # journal stores it once, so it holds 20 more records, as the rollups count.
    write_calls(rng, now, count=20, days=0, at=now - timedelta(days=2, minutes=13), twice=True)
    assert run_query(dataset=carrier_calls, query=query).rows == before.rows  # not yet refreshed

    result = call_rollups.refresh_carrier_call_rollups()

    assert result.hours >= 1
    after = run_query(dataset=carrier_calls, query=query)
    assert sum(row["calls"] for row in after.rows) == sum(row["calls"] for row in before.rows) + 20
    assert_same([after], raw_answers(carrier_calls, [query]))
    call_rollups.refresh_carrier_call_rollups()  # found again by its snapshot: the hour recomputed, not added to
    assert run_query(dataset=carrier_calls, query=query).rows == after.rows


def test_a_snapshot_listing_thousands_of_transactions_in_progress_is_kept(carrier_calls: Dataset) -> None:
    """PostgreSQL's snapshot names every transaction in progress when it was taken: its text has no bound."""
    rng = random.Random(7)
    now = timezone.now()
    write_calls(rng, now, count=30, days=2)
    call_rollups.catch_up_carrier_call_rollups()
    busy = "1000:5000:" + ",".join(str(xid) for xid in range(1000, 5000))
    assert len(busy) > 10_000
    CarrierCallRollupState.objects.filter(pk=1).update(checked_snapshot=busy)
    assert CarrierCallRollupState.objects.get().checked_snapshot == busy
    query = DatasetQuery(measures=("calls",), group_by=("carrier",), since=now - timedelta(days=3))
    call_rollups.refresh_carrier_call_rollups()  # reads what the busy snapshot did not see, keeps its own
    assert CarrierCallRollupState.objects.get().checked_snapshot != busy
    assert_same([run_query(dataset=carrier_calls, query=query)], raw_answers(carrier_calls, [query]))


def test_calls_older_than_their_retention_are_read_from_the_journal(carrier_calls: Dataset, settings: Any) -> None:
    rng = random.Random(5)
    now = timezone.now()
    write_calls(rng, now, count=150, days=20)
    call_rollups.catch_up_carrier_call_rollups()
    settings.JOURNAL_TTL_DAYS = {**settings.JOURNAL_TTL_DAYS, Kind.CARRIER_CALL: 7}
    query = DatasetQuery(measures=("calls", "avg_latency_ms"), group_by=("outcome",), since=now - timedelta(days=30))
    rolled = run_query(dataset=carrier_calls, query=query)
    assert_same([rolled], raw_answers(carrier_calls, [query]))
    # The next refresh starts at the cutoff and drops what lies before it; answers stay the journal's.
    call_rollups.forget_carrier_call_rollups()
    call_rollups.catch_up_carrier_call_rollups()
    assert CarrierCallRollupState.objects.get().covered_from >= now - timedelta(days=7, hours=1)
    assert_same([run_query(dataset=carrier_calls, query=query)], raw_answers(carrier_calls, [query]))


def test_what_the_rollups_cannot_answer_is_read_from_the_journal(carrier_calls: Dataset) -> None:
    write_calls(random.Random(6), timezone.now(), count=30, days=2)
    call_rollups.catch_up_carrier_call_rollups()
    since = timezone.now() - timedelta(days=2)
    bucketed = DatasetQuery(measures=("calls",), bucket="hour", since=since)
    assert run_query(dataset=carrier_calls, query=bucketed).read_from == "rows"
    assert run_query(dataset=carrier_calls, query=DatasetQuery(measures=("calls",), since=since)).read_from == "rollups"


def test_the_refresh_job_is_scheduled_and_brings_the_rollups_to_the_last_whole_hour(carrier_calls: Dataset) -> None:
    entry = PeriodicTask.objects.get(name="reporting: refresh carrier-call rollups")
    assert entry.enabled
    assert entry.interval is not None
    assert (entry.interval.every, entry.interval.period) == (1, "minutes")
    write_calls(random.Random(7), timezone.now(), count=10, days=1)
    celery_app.tasks[entry.task].apply().get()
    state = CarrierCallRollupState.objects.get()
    assert state.covered_until == timezone.now().replace(minute=0, second=0, microsecond=0)
