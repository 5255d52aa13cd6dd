"""Journal records at volume (PostgreSQL): monthly partitions in the journal's database, the append-only guards
on every partition, retention by whole months, archival of old months, and the migration of an existing
journal."""

import gzip
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.db import IntegrityError, InternalError, connections, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from journal import store
from journal.models import JournalRecord
from journal.partitions import RECORDS
from journal.services import build, expire
from journal.store import CORRELATION_FIELDS, SqlJournalStore
from playpay.partitions import add_months, ensure_all, month_start, read_archive

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]


def write(kind: str, at: datetime, **data: Any) -> None:
    SqlJournalStore().write([{**build(kind, data), "occurred_at": at.isoformat()}])


def write_without_record_id(kind: str, at: datetime, **data: Any) -> None:
    """A record as the store wrote it before records had ids, into the table as the migrations before 0010
    left it."""
    document = {**build(kind, data), "occurred_at": at.isoformat()}
    del document["record_id"]
    columns = ["occurred_at", "kind", *CORRELATION_FIELDS, "document"]
    with connections["journal"].cursor() as cursor:
        cursor.execute(
            f"INSERT INTO journal_journalrecord ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))})",  # noqa: S608
            [at, kind, *([""] * len(CORRELATION_FIELDS)), json.dumps(document)],
        )


def located() -> dict[int, str]:
    """The `n` of each record -> the partition it is stored in."""
    with connections["journal"].cursor() as cursor:
        cursor.execute("SELECT (document->'data'->>'n')::int, tableoid::regclass::text FROM journal_journalrecord")
        return dict(cursor.fetchall())


def test_records_land_in_their_month_and_a_month_without_partition_waits_in_the_default_one() -> None:
    assert connections["journal"].vendor == "postgresql", "the journal must be on PostgreSQL here: set JOURNAL_URL"
    now = timezone.now()
    two_months_ago = add_months(month_start(now), -2)
    at = datetime(two_months_ago.year, two_months_ago.month, 20, tzinfo=UTC)
    write("api_request", now, n=1)
    write("api_request", at, n=2)
    assert located() == {1: RECORDS.partition_name(month_start(now)), 2: RECORDS.default_partition}
    # The shared job gives that month a partition of its own and moves the record there, through the
    # append-only guard, which lets only this move through.
    assert RECORDS.partition_name(two_months_ago) in ensure_all()
    assert located() == {1: RECORDS.partition_name(month_start(now)), 2: RECORDS.partition_name(two_months_ago)}
    assert JournalRecord.objects.filter(occurred_at=at).count() == 1


def test_the_job_creates_months_ahead_for_the_journal_too() -> None:
    in_a_year = timezone.now() + timedelta(days=365)
    created = ensure_all(now=in_a_year)
    for months in range(4):
        assert RECORDS.partition_name(add_months(month_start(in_a_year), months)) in created
        assert f"funnel_funnelevent_p{add_months(month_start(in_a_year), months):%Y_%m}" in created


def test_every_partition_refuses_updates_deletes_and_truncates() -> None:
    now = timezone.now()
    RECORDS.ensure(since=add_months(month_start(now), -1))
    write("api_request", now, n=1)
    write("api_request", datetime(2019, 5, 1, tzinfo=UTC), n=2)  # the default partition
    journal = connections["journal"]
    # Partition names of our own making.
    for partition in (RECORDS.partition_name(month_start(now)), RECORDS.default_partition):
        for statement in (
            f"UPDATE {partition} SET kind = 'edited'",  # noqa: S608
            f"DELETE FROM {partition}",  # noqa: S608
            f"TRUNCATE {partition}",
        ):
            with (
                pytest.raises((IntegrityError, InternalError), match="append-only"),
                transaction.atomic(using="journal"),
                journal.cursor() as cursor,
            ):
                cursor.execute(statement)
    # A partition made later has the guards as well.
    new = RECORDS.partition_name(add_months(month_start(now), 6))
    RECORDS.ensure(months_ahead=6)
    with (
        pytest.raises((IntegrityError, InternalError), match="append-only"),
        transaction.atomic(using="journal"),
        journal.cursor() as cursor,
    ):
        cursor.execute(f"TRUNCATE {new}")
    assert JournalRecord.objects.count() == 2


def test_expiry_drops_months_past_every_kinds_time_whole_and_the_rest_row_by_row(settings: Any) -> None:
    now = timezone.now()
    settings.JOURNAL_TTL_DAYS = {"api_request": 90, "carrier_call": 400}
    settings.JOURNAL_TTL_DEFAULT_DAYS = 200
    old_month = add_months(month_start(now), -15)  # past 400 days: every kind has expired
    mid_month = add_months(month_start(now), -5)  # api_request expired, the others kept
    RECORDS.ensure(since=old_month)
    write("carrier_call", datetime(old_month.year, old_month.month, 10, tzinfo=UTC), n=1)
    write("api_request", datetime(mid_month.year, mid_month.month, 10, tzinfo=UTC), n=2)
    write("carrier_call", datetime(mid_month.year, mid_month.month, 10, tzinfo=UTC), n=3)
    write("api_request", now, n=4)
    assert expire(now=now) == 2
    assert sorted(located()) == [3, 4]
    assert RECORDS.partition_name(old_month) not in RECORDS.partitions()  # dropped, not emptied
    assert RECORDS.partition_name(mid_month) in RECORDS.partitions()


def test_expiry_deletes_rows_in_short_batches_each_bound_by_a_statement_timeout(
    settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.JOURNAL_TTL_DAYS = {"api_request": 90}
    settings.JOURNAL_TTL_DEFAULT_DAYS = 400
    now = timezone.now()
    mid_month = add_months(month_start(now), -5)  # api_request expired, the others kept: deleted by rows
    RECORDS.ensure(since=mid_month)
    for n in range(7):
        write("api_request", datetime(mid_month.year, mid_month.month, 10, tzinfo=UTC), n=n)
    write("carrier_call", datetime(mid_month.year, mid_month.month, 10, tzinfo=UTC), n=100)
    monkeypatch.setattr(store, "EXPIRY_BATCH_ROWS", 3)
    with CaptureQueriesContext(connections["journal"]) as queries:
        assert expire(now=now) == 7
    assert sorted(located()) == [100]
    statements = [query["sql"] for query in queries.captured_queries]
    assert len([sql for sql in statements if sql.startswith("DELETE")]) == 3  # 3 + 3 + 1
    timeouts = [sql for sql in statements if "statement_timeout" in sql]
    assert len(timeouts) >= 3
    assert all(sql.rstrip().endswith("'60s'") for sql in timeouts), timeouts


def test_archiving_copies_old_months_to_files_checks_them_and_drops_the_partitions(tmp_path: Path) -> None:
    now = timezone.now()
    old = add_months(month_start(now), -14)
    RECORDS.ensure(since=old)
    for n in range(3):
        write("api_request", datetime(old.year, old.month, 2 + n, tzinfo=UTC), n=n, text='a "quoted",\nline')
    write("api_request", now, n=9)
    call_command("archive_partitions", "--table", RECORDS.table, "--older-than-days", "365", "--dir", str(tmp_path))
    assert [month for month in RECORDS.months() if month < add_months(month_start(now), -12)] == []
    path = tmp_path / f"{RECORDS.partition_name(old)}.csv.gz"
    rows = list(read_archive(path))
    assert sorted(json.loads(row["document"])["data"]["n"] for row in rows) == [0, 1, 2]
    assert json.loads(rows[0]["document"])["data"]["text"] == 'a "quoted",\nline'
    with gzip.open(path) as archive:
        assert (
            archive.readline()
            == b"id,occurred_at,kind,"
            + b",".join(name.encode() for name in (*CORRELATION_FIELDS, "document", "record_id"))
            + b"\n"
        )
    assert sorted(located()) == [9]  # this month's record stays


def test_archiving_takes_up_a_month_left_detached(tmp_path: Path) -> None:
    old = add_months(month_start(timezone.now()), -20)
    RECORDS.ensure(since=old)
    write("carrier_call", datetime(old.year, old.month, 5, tzinfo=UTC), n=1)
    name = RECORDS.partition_name(old)
    with connections["journal"].cursor() as cursor:
        cursor.execute(f"ALTER TABLE {RECORDS.table} DETACH PARTITION {name}")  # an archive cut short
    assert name in RECORDS.detached()
    call_command("archive_partitions", "--table", RECORDS.table, "--older-than-days", "3650", "--dir", str(tmp_path))
    assert RECORDS.detached() == []
    assert [row["kind"] for row in read_archive(tmp_path / f"{name}.csv.gz")] == ["carrier_call"]


def test_a_month_archived_again_after_late_records_gets_a_second_file_next_to_the_first(tmp_path: Path) -> None:
    old = add_months(month_start(timezone.now()), -14)
    RECORDS.ensure(since=old)
    write("carrier_call", datetime(old.year, old.month, 5, tzinfo=UTC), n=1)
    call_command("archive_partitions", "--table", RECORDS.table, "--older-than-days", "365", "--dir", str(tmp_path))
    # A record sent late with the old month's time: it waits in the default partition, the job gives the month
    # its partition again (it is within 24 months), and the next archival takes it out once more.
    write("carrier_call", datetime(old.year, old.month, 6, tzinfo=UTC), n=2)
    assert RECORDS.partition_name(old) in ensure_all()
    call_command("archive_partitions", "--table", RECORDS.table, "--older-than-days", "365", "--dir", str(tmp_path))
    name = RECORDS.partition_name(old)
    first, second = tmp_path / f"{name}.csv.gz", tmp_path / f"{name}.2.csv.gz"
    assert [json.loads(row["document"])["data"]["n"] for row in read_archive(first)] == [1]
    assert [json.loads(row["document"])["data"]["n"] for row in read_archive(second)] == [2]
    assert sorted(path.name for path in tmp_path.glob(f"{name}.*")) == sorted([first.name, second.name])
    assert RECORDS.partition_name(old) not in RECORDS.partitions()


@pytest.mark.django_db(transaction=True)
@pytest.mark.journal
def test_migrating_an_existing_journal_keeps_its_records_ids_sequence_and_guards_both_ways() -> None:
    from django.db.migrations.executor import MigrationExecutor

    journal = connections["journal"]
    before, partitioned = [("journal", "0006_spool_moves_to_disk")], [("journal", "0007_records_partitioned_by_month")]

    def migrate(target: list[tuple[str, str]]) -> None:
        executor = MigrationExecutor(journal)
        executor.loader.build_graph()
        executor.migrate(target)

    def state() -> tuple[str, list[tuple[int, str, str]], list[str]]:
        with journal.cursor() as cursor:
            cursor.execute("SELECT relkind FROM pg_class WHERE relname = 'journal_journalrecord'")
            kind = cursor.fetchone()[0]
            cursor.execute("SELECT id, kind, occurred_at::text FROM journal_journalrecord ORDER BY id")
            rows = cursor.fetchall()
            cursor.execute(
                "SELECT DISTINCT tgname FROM pg_trigger "
                "WHERE NOT tgisinternal AND tgrelid = 'journal_journalrecord'::regclass"
            )
            return kind, rows, sorted(row[0] for row in cursor.fetchall())

    try:
        migrate(before)
        now = timezone.now()
        for n, days in enumerate((0, 40, 400, 3000)):  # this month, recent months, and one older than 24 months
            write_without_record_id("api_request", now - timedelta(days=days), n=n)
        kind, rows, guards = state()
        assert kind == "r"
        assert len(rows) == 4
        migrate(partitioned)
        assert state() == ("p", rows, guards)
        assert located()[3] == RECORDS.default_partition
        write_without_record_id("carrier_call", now, n=4)  # the id sequence carries on after the copied ids
        assert JournalRecord.objects.filter(kind="carrier_call").values_list("pk", flat=True).get() > max(
            row[0] for row in rows
        )
        migrate(before)
        kind, back, guards_back = state()
        assert (kind, back[:4], guards_back) == ("r", rows, guards)
        with pytest.raises((IntegrityError, InternalError), match="append-only"), transaction.atomic(using="journal"):
            JournalRecord.objects.all().delete()
    finally:
        migrate(MigrationExecutor(journal).loader.graph.leaf_nodes("journal"))
