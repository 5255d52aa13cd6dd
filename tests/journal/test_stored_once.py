"""A journal record reaches the store at least once and is stored exactly once: a write whose acknowledgement was
lost and a spool segment shipped again find the record there by its id (`record_id`) and skip it."""

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.db import connections
from django.utils import timezone
from pymongo.errors import BulkWriteError

from journal.models import JournalRecord
from journal.partitions import RECORDS
from journal.services import build, drain_spool, record
from journal.spool import Spool
from journal.store import SqlJournalStore, only_duplicates
from playpay.partitions import add_months, month_start
from tests.deploy.processes import wait_for

pytestmark = pytest.mark.django_db


def stored(request_id: str) -> int:
    return JournalRecord.objects.filter(request_id=request_id).count()


def documents(*request_ids: str) -> list[dict[str, Any]]:
    return [build("api_request", {"endpoint": "/api/v1/payments/"}, app="game", request_id=rid) for rid in request_ids]


def without_record_id(document: dict[str, Any]) -> dict[str, Any]:
    """A document as built before records had ids (in a spool segment written then)."""
    return {name: value for name, value in document.items() if name != "record_id"}


# Transactional: the record's INSERT commits, as in production, and the drainer ships on a connection of its own.
@pytest.mark.journal
@pytest.mark.django_db(transaction=True)
def test_a_record_whose_acknowledgement_was_lost_is_stored_once(monkeypatch: Any, settings: Any) -> None:
    write = SqlJournalStore.write
    lost: list[bool] = []

    def committed_then_cut_off(self: SqlJournalStore, documents: Any) -> None:
        write(self, documents)
        if not lost:  # the first write only: the server committed it, the client never heard back
            lost.append(True)
            raise psycopg.OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(SqlJournalStore, "write", committed_then_cut_off)
    record("api_request", {"endpoint": "/api/v1/payments/"}, app="game", request_id="cut-off")
    assert lost, "the record was not written"
    wait_for(
        "the drainer to empty the spool", lambda: not list(Path(settings.JOURNAL_SPOOL_DIR).glob("*.jsonl")), timeout=30
    )
    assert stored("cut-off") == 1


@pytest.mark.parametrize("batch", [False, True], ids=["one record", "a batch"])
def test_a_segment_shipped_again_stores_each_record_once(journal_engines: str, settings: Any, batch: bool) -> None:
    already, *new = documents("already", *(["new-1", "new-2"] if batch else []))
    SqlJournalStore().write([already])
    Spool(settings.JOURNAL_SPOOL_DIR).append([already, *new])
    assert drain_spool() == 1 + len(new)
    assert [stored(rid) for rid in ("already", "new-1", "new-2")] == ([1, 1, 1] if batch else [1, 0, 0])
    Spool(settings.JOURNAL_SPOOL_DIR).append([already, *new])  # its drainer died before deleting it
    assert drain_spool() == 1 + len(new)
    assert JournalRecord.objects.count() == 1 + len(new)


def test_records_built_before_they_had_ids_are_still_stored(journal_engines: str, settings: Any) -> None:
    one, *batch = (without_record_id(document) for document in documents("old-1", "old-2", "old-3"))
    SqlJournalStore().write([one])
    Spool(settings.JOURNAL_SPOOL_DIR).append(batch)
    assert drain_spool() == 2
    assert [stored(rid) for rid in ("old-1", "old-2", "old-3")] == [1, 1, 1]
    assert JournalRecord.objects.filter(record_id__isnull=True).count() == 3


@pytest.mark.postgres
def test_partitions_made_after_the_migration_store_a_record_once_too() -> None:
    now = timezone.now()
    far = now + timedelta(days=2 * 365)
    ahead = month_start(far)  # a month past those the migrations made
    late = add_months(month_start(now), -5)  # no partition yet: its records wait in the default partition
    written = [
        {**document, "occurred_at": datetime(month.year, month.month, 10, tzinfo=UTC).isoformat()}
        for document, month in zip(documents("ahead", "late"), (ahead, late), strict=True)
    ]
    store = SqlJournalStore()
    assert RECORDS.partition_name(ahead) in RECORDS.ensure(now=far)
    store.write(written)
    store.write(written)
    # The shared job gives the late month a partition of its own (made apart, then attached) and moves its record
    # there; then both are written again, one by one.
    assert RECORDS.partition_name(late) in RECORDS.ensure(now=now, since=late)
    for document in written:
        store.write([document])
    with connections["journal"].cursor() as cursor:
        cursor.execute("SELECT request_id, tableoid::regclass::text FROM journal_journalrecord ORDER BY 1")
        assert cursor.fetchall() == [("ahead", RECORDS.partition_name(ahead)), ("late", RECORDS.partition_name(late))]


def _bulk_write_error(*codes: int, write_concern: bool = False) -> BulkWriteError:
    """The error pymongo raises for an unordered insert_many some of whose documents were refused."""
    failures = [{"index": index, "code": code, "errmsg": "refused"} for index, code in enumerate(codes)]
    concern = [{"code": 64, "errmsg": "waiting for replication timed out"}] if write_concern else []
    return BulkWriteError({"writeErrors": failures, "writeConcernErrors": concern, "nInserted": 1})


def test_mongodb_skips_documents_it_holds_and_reports_any_other_refusal() -> None:
    # No MongoDB server here: test_store_contract runs the store itself against one (JOURNAL_MONGODB_TEST_URL).
    assert only_duplicates(_bulk_write_error(11000, 11000))
    assert not only_duplicates(_bulk_write_error(11000, 121))  # a document failing validation
    assert not only_duplicates(_bulk_write_error(11000, write_concern=True))
