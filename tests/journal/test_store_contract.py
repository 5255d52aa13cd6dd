"""The journal store's contract, run against every backend available: SQL always, on the database of
JOURNAL_URL and on SQLite (the embedded default's journal), MongoDB with JOURNAL_MONGODB_TEST_URL set
(a real server)."""

import json
import os
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.db import IntegrityError, InternalError, connections, transaction
from django.utils import timezone

from journal.models import JournalRecord
from journal.services import build
from journal.store import (
    DocumentField,
    JournalAggregate,
    JournalQuery,
    JournalStore,
    MongoJournalStore,
    SqlJournalStore,
)

pytestmark = pytest.mark.django_db
BACKENDS = ["sql", "sql-sqlite"] + (["mongodb"] if os.environ.get("JOURNAL_MONGODB_TEST_URL") else [])


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest) -> Iterator[JournalStore]:
    if request.param.startswith("sql"):
        if request.param == "sql-sqlite":
            request.getfixturevalue("journal_on_sqlite")
            assert connections["journal"].vendor == "sqlite"
        yield SqlJournalStore()
        return
    collection = f"journal_test_{uuid.uuid4().hex[:8]}"
    mongo = MongoJournalStore(os.environ["JOURNAL_MONGODB_TEST_URL"], collection=collection)
    yield mongo
    mongo.collection.drop()


def docs(*specs: tuple[str, dict[str, str]]) -> list[dict[str, Any]]:
    return [build(kind, {"n": index}, **correlation) for index, (kind, correlation) in enumerate(specs)]


def test_written_documents_come_back_by_correlation_id_newest_first(store: JournalStore) -> None:
    store.write(
        docs(
            ("api_request", {"payment_id": "p1", "app": "game"}),
            ("carrier_call", {"payment_id": "p1", "carrier": "c1"}),
            ("api_request", {"payment_id": "p2", "app": "game"}),
        )
    )
    found = store.query(JournalQuery(correlation={"payment_id": "p1"}))
    assert [d["kind"] for d in found] == ["carrier_call", "api_request"]
    assert found[0]["data"] == {"n": 1}
    assert found[0]["correlation"] == {"payment_id": "p1", "carrier": "c1"}


def test_queries_filter_by_kind_carrier_app_and_time(store: JournalStore) -> None:
    store.write(
        docs(("carrier_call", {"carrier": "c1"}), ("carrier_call", {"carrier": "c2"}), ("api_request", {"app": "game"}))
    )
    assert len(store.query(JournalQuery(kind="carrier_call"))) == 2
    assert len(store.query(JournalQuery(correlation={"carrier": "c2"}))) == 1
    assert len(store.query(JournalQuery(correlation={"app": "game"}, kind="api_request"))) == 1
    now = timezone.now()
    assert store.query(JournalQuery(since=now + timedelta(minutes=1))) == []
    assert len(store.query(JournalQuery(since=now - timedelta(minutes=1), until=now + timedelta(minutes=1)))) == 3
    assert len(store.query(JournalQuery(limit=2))) == 2


def test_counts_aggregate_in_the_store(store: JournalStore) -> None:
    store.write(
        docs(
            ("carrier_call", {"carrier": "c1"}),
            ("carrier_call", {"carrier": "c1"}),
            ("carrier_call", {"carrier": "c2"}),
        )
    )
    assert store.count(by="carrier", query=JournalQuery(kind="carrier_call")) == {"c1": 2, "c2": 1}
    assert store.count(by="kind", query=JournalQuery()) == {"carrier_call": 3}
    with pytest.raises(ValueError, match="counts are by"):
        store.count(by="msisdn_hash", query=JournalQuery())


def test_a_document_written_again_is_stored_once_and_the_rest_of_its_batch_still_is(store: JournalStore) -> None:
    first, second = docs(("api_request", {"request_id": "r1"}), ("api_request", {"request_id": "r2"}))
    store.write([first])
    store.write([first, second])  # a batch shipped again after the store took part of it
    store.write([first])
    found = store.query(JournalQuery())
    assert sorted((d["correlation"]["request_id"], d["record_id"]) for d in found) == [
        ("r1", first["record_id"]),
        ("r2", second["record_id"]),
    ]


def test_an_unknown_correlation_id_is_refused(store: JournalStore) -> None:
    with pytest.raises(ValueError, match="not a correlation id"):
        store.query(JournalQuery(correlation={"password": "x"}))


def test_records_refuse_changes_in_python() -> None:
    SqlJournalStore().write(docs(("api_request", {"app": "game"})))
    record = JournalRecord.objects.get()
    with pytest.raises(PermissionError):
        record.save()
    with pytest.raises(PermissionError):
        record.delete()


@pytest.mark.postgres
def test_postgresql_refuses_updates_and_deletes_of_journal_records() -> None:
    from django.db import connections

    assert connections["journal"].vendor == "postgresql", "the journal must be on PostgreSQL here: set JOURNAL_URL"
    SqlJournalStore().write(docs(("api_request", {"app": "game"})))
    for attempt in (lambda: JournalRecord.objects.update(kind="edited"), lambda: JournalRecord.objects.all().delete()):
        with pytest.raises((IntegrityError, InternalError), match="append-only"), transaction.atomic(using="journal"):
            attempt()
    assert JournalRecord.objects.get().kind == "api_request"


@pytest.mark.postgres
def test_postgresql_refuses_to_truncate_journal_records_even_in_a_purge() -> None:
    from django.db import connections

    journal = connections["journal"]
    assert journal.vendor == "postgresql", "the journal must be on PostgreSQL here: set JOURNAL_URL"
    SqlJournalStore().write(docs(("api_request", {"app": "game"})))

    def truncate(purge: str) -> None:
        with journal.cursor() as cursor:
            cursor.execute(f"SET LOCAL playpay.journal_purge = '{purge}'")
            cursor.execute("TRUNCATE journal_journalrecord")

    for purge in ("off", "on"):  # retention's purge setting lets deletes through, never a TRUNCATE
        with (
            pytest.raises((IntegrityError, InternalError), match="append-only: TRUNCATE refused"),
            transaction.atomic(using="journal"),
        ):
            truncate(purge)
    assert JournalRecord.objects.count() == 1


def test_retention_purges_only_records_older_than_the_date(store: JournalStore) -> None:
    store.write(docs(("api_request", {"app": "game"}), ("api_request", {"app": "game"})))
    assert store.purge(before=timezone.now() - timedelta(days=1)) == 0
    assert store.purge(before=timezone.now() + timedelta(seconds=1)) == 2
    assert store.query(JournalQuery()) == []


def test_aggregates_filter_group_and_flag_on_document_values(store: JournalStore) -> None:
    calls = [
        ("c1", "charge", "failed", False, 200),
        ("c1", "charge", "succeeded", True, 100),
        ("c2", "charge", "succeeded", False, 300),
        ("c1", "refund", "failed", True, 50),
    ]
    store.write(
        [
            build(
                "carrier_call",
                {"operation": op, "result": {"outcome": outcome, "transport_failed": lost}, "status": status},
                carrier=carrier,
            )
            for carrier, op, outcome, lost, status in calls
        ]
    )
    operation, status = DocumentField("data.operation"), DocumentField("data.status", cast="int")
    failed = DocumentField("data.result.outcome", flag_values=("failed",))
    lost = DocumentField("data.result.transport_failed", flag_values=(True,))

    def aggregate(**filters: tuple[DocumentField, list[str]]) -> list[dict[str, Any]]:
        spec = JournalAggregate(
            kind="carrier_call",
            filters=filters,
            group={"carrier": DocumentField("correlation.carrier")},
            measures={
                "calls": ("count", None),
                "failed": ("sum", failed),
                "lost": ("sum", lost),
                "top_status": ("max", status),
            },
        )
        return [{**row, "failed": int(row["failed"]), "lost": int(row["lost"])} for row in store.aggregate(spec)]

    assert aggregate(operation=(operation, ["charge"])) == [
        {"carrier": "c1", "calls": 2, "failed": 1, "lost": 1, "top_status": 200},
        {"carrier": "c2", "calls": 1, "failed": 0, "lost": 0, "top_status": 300},
    ]
    assert aggregate(status=(status, ["50", "300"])) == [
        {"carrier": "c1", "calls": 1, "failed": 1, "lost": 1, "top_status": 50},
        {"carrier": "c2", "calls": 1, "failed": 0, "lost": 0, "top_status": 300},
    ]
    assert aggregate(
        operation=(operation, ["charge", "refund"]), carrier=(DocumentField("correlation.carrier"), ["c1"])
    ) == [
        {"carrier": "c1", "calls": 3, "failed": 2, "lost": 2, "top_status": 200},
    ]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"bucket": "fortnight"}, "time buckets are"),
        ({"measures": {"x": ("median", None)}}, "aggregations are"),
        ({"measures": {"x": ("sum", None)}}, "only a count can do without a field"),
    ],
)
def test_an_aggregate_either_store_cannot_compute_is_refused_when_asked(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        JournalAggregate(kind="carrier_call", **spec)


def test_a_document_no_store_could_hold_is_stored_sanitized_and_marked(store: JournalStore) -> None:
    nested: Any = "bottom"
    for _ in range(2000):
        nested = [nested]
    document = build(
        "api_request",
        {"text": "a\x00b\ud800", "numbers": [float("nan"), float("inf")], "k\x00": 1, "deep": nested},
        msisdn="+44\udc00",
        user_ref="p\x00",
    )
    store.write([document])
    (found,) = store.query(JournalQuery(correlation={"user_ref": "p\\u0000"}))
    assert found["_sanitized"] is True
    assert found["data"]["text"] == "a\\u0000b\\ud800"
    assert found["data"]["numbers"] == ["nan", "inf"]
    assert found["data"]["k\\u0000"] == 1
    assert "nested deeper than" in json.dumps(found["data"]["deep"])
    assert found["correlation"]["msisdn_hash"]


def test_an_ordinary_document_is_not_marked(store: JournalStore) -> None:
    store.write([build("api_request", {"text": "é ✓ 😀", "n": 1.5}, app="game")])
    (found,) = store.query(JournalQuery(correlation={"app": "game"}))
    assert "_sanitized" not in found
    assert found["data"] == {"text": "é ✓ 😀", "n": 1.5}


def test_a_batch_is_stored_document_for_document_as_one_at_a_time(store: JournalStore) -> None:
    # A spool segment reaches the store as one batch (a COPY on PostgreSQL): every document arrives whole.
    batch = [
        build(
            "api_request",
            {"text": "é ✓ 😀", "tab\there": "a\tb\nc\\d", "i": i, "nested": {"list": [i, None]}},
            app="batch",
        )
        for i in range(5)
    ]
    sanitized = build("api_request", {"text": "a\x00b"}, app="batch", user_ref="p\x00")
    store.write([*batch, sanitized])
    found = store.query(JournalQuery(correlation={"app": "batch"}))
    assert sorted((document["data"] for document in found), key=json.dumps) == sorted(
        [document["data"] for document in batch] + [{"text": "a\\u0000b"}], key=json.dumps
    )
    assert next(document for document in found if document.get("_sanitized"))["correlation"]["user_ref"] == "p\\u0000"


def test_retention_per_kind_drops_each_kind_past_its_own_time(store: JournalStore) -> None:
    now = timezone.now()

    def aged(kind: str, days: int) -> dict[str, Any]:
        document = build(kind, {"days": days})
        return {**document, "occurred_at": (now - timedelta(days=days)).isoformat()}

    store.write([aged("api_request", 100), aged("api_request", 10), aged("carrier_call", 100)])
    store.write([aged("carrier_call", 500), aged("staff_action", 500), aged("staff_action", 100)])
    cutoffs = {"api_request": now - timedelta(days=90), "carrier_call": now - timedelta(days=400)}
    assert store.expire(cutoffs=cutoffs, default_cutoff=now - timedelta(days=200)) == 3
    left = sorted((d["kind"], d["data"]["days"]) for d in store.query(JournalQuery()))
    assert left == [("api_request", 10), ("carrier_call", 100), ("staff_action", 100)]
