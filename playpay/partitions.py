"""Monthly RANGE partitions of high-volume tables on PostgreSQL, and their retention.

A partitioned table is declared `PARTITION BY RANGE (<timestamp column>)` with one partition per calendar
month in UTC (`<table>_p2026_11` holds [2026-11-01, 2026-12-01)) and a DEFAULT partition (`<table>_default`)
that takes whatever no monthly partition covers, so no row is ever refused for its timestamp. Each app
declares its tables with `register(PartitionedTable(...))` when it loads; one periodic job
(`ensure_all`) then creates the coming months of every registered table ahead of time and gives the
months that landed in a default partition a partition of their own, moving their rows out of it.

Retention is by whole months: `archive` detaches a month's partition, copies it to a gzip'ed CSV file
(PostgreSQL's COPY), checks the file holds as many rows as the partition, and only then drops it.
Elsewhere (SQLite, the embedded default) tables are plain and all of this does nothing.
"""

import contextlib
import csv
import gzip
import io
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, TypeVar

from django.core.exceptions import ObjectDoesNotExist
from django.db import DatabaseError, connections, models, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import QuerySet
from django.utils import timezone

from playpay.compiled_reads import CompiledRead

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=models.Model)

MONTHS_AHEAD = 3
# A month that turns up in a default partition gets its own partition when it is no further back than
# this; rows from further back (a sender's clock gone wrong) stay in the default partition.
MONTHS_BACK = 24
# Partition DDL takes a short exclusive lock on the table: give up rather than queue behind a long report
# (and hold up the writers queued behind us); the next run tries again.
LOCK_TIMEOUT = "5s"

# A partition is analysed again when the rows changed since its last analysis are more than this share
# of the rows it had then (and more than ANALYZE_MIN_CHANGES).
ANALYZE_CHANGED_SHARE = 0.5
ANALYZE_MIN_CHANGES = 1000
# Partitions with rows but no statistics, or changed by more than a share since their last analysis.
# reltuples is -1 until a partition is first analysed (or vacuumed); n_mod_since_analyze counts
# committed changes, reported by each backend within about a second.
STALE_PARTITIONS = """
SELECT c.relname
FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
WHERE i.inhparent = %s::regclass
  AND (c.relname = %s OR c.relname >= %s)
  AND (
    (c.reltuples < 0 AND pg_relation_size(c.oid) > 0)
    OR coalesce(s.n_mod_since_analyze, 0) > greatest(%s, c.reltuples * %s)
  )
ORDER BY 1
"""

csv.field_size_limit(1 << 30)  # journal documents are large; the archive's check reads them back


def month_start(moment: datetime | date) -> date:
    return date(moment.year, moment.month, 1)


def add_months(month: date, count: int) -> date:
    index = month.year * 12 + month.month - 1 + count
    return date(index // 12, index % 12 + 1, 1)


def months_between(first: date, last: date) -> int:
    return (last.year - first.year) * 12 + last.month - first.month


def month_bounds(month: date) -> tuple[datetime, datetime]:
    start = datetime(month.year, month.month, 1, tzinfo=UTC)
    end_month = add_months(month, 1)
    return start, datetime(end_month.year, end_month.month, 1, tzinfo=UTC)


class MonthUnsettled(RuntimeError):
    """A month still holds rows in motion: it cannot leave the database yet."""


@dataclass(frozen=True)
class Archived:
    partition: str
    rows: int
    path: Path


@dataclass(frozen=True)
class PartitionedTable:
    """One table partitioned by month on `column`, in the database `using`.

    `partition_sql` is run for every new partition, `{partition}` standing for its name: what a partition
    does not inherit from its parent (a statement-level TRUNCATE trigger, say).

    With `moves_from_default` false, months found in the default partition are left there (no partition is
    made for them): a table other partitioned tables refer to by foreign key cannot have rows moved out
    of a partition (PostgreSQL checks the references at the DELETE, deferred or not).

    `released` is run, `{partition}` standing for a month's partition, in the transaction that detaches it
    (archive, drop): what lets go of its rows in unpartitioned tables that refer to them (key tables), which
    PostgreSQL would otherwise refuse the detach for.

    `unsettled` is a query counting what still moves in a month (`%(start)s` to `%(end)s`): while it counts
    any, the month is neither archived nor dropped (`MonthUnsettled`), e.g. a payment whose refund the
    carrier has not confirmed yet, which will need the month's ledger lines when it does.
    """

    table: str
    column: str
    using: str = "default"
    months_ahead: int = MONTHS_AHEAD
    partition_sql: tuple[str, ...] = ()
    moves_from_default: bool = True
    released: tuple[str, ...] = ()
    unsettled: str = ""

    @property
    def connection(self) -> BaseDatabaseWrapper:
        return connections[self.using]

    @property
    def default_partition(self) -> str:
        return f"{self.table}_default"

    @property
    def default_fence(self) -> str:
        """The CHECK constraint `fence_default` puts on the default partition for the time of a run."""
        return f"{self.default_partition}_fence"

    def is_partitioned(self) -> bool:
        return self.connection.vendor == "postgresql"

    def partition_name(self, month: date) -> str:
        return f"{self.table}_p{month.year:04d}_{month.month:02d}"

    def month_of(self, partition: str) -> date | None:
        """The month a monthly partition's name stands for (None for the default one)."""
        prefix = f"{self.table}_p"
        if not partition.startswith(prefix):
            return None
        year, _, month = partition[len(prefix) :].partition("_")
        return date(int(year), int(month), 1)

    def partitions(self) -> list[str]:
        """Names of the table's partitions (the default one included), sorted."""
        if not self.is_partitioned():
            return []
        with self.connection.cursor() as cursor:
            cursor.execute(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "WHERE i.inhparent = %s::regclass ORDER BY 1",
                [self.table],
            )
            return [row[0] for row in cursor.fetchall()]

    def months(self) -> list[date]:
        """The months that have a partition of their own, oldest first."""
        return sorted(month for name in self.partitions() if (month := self.month_of(name)) is not None)

    def default_months(self, cursor: Any) -> list[date]:
        cursor.execute(
            f"SELECT DISTINCT date_trunc('month', {self.column} AT TIME ZONE 'UTC')::date FROM {self.default_partition}"
        )
        return [row[0] for row in cursor.fetchall()]

    def create_partition(self, cursor: Any, month: date, *, rows_in_default: bool | None = None) -> None:
        """Create the month's partition; rows of that month already in the default partition move into it.

        Call inside a transaction that holds the table's ACCESS EXCLUSIVE lock (as `ensure` does), so that
        no row for the month lands in the default partition meanwhile. `rows_in_default` says whether the
        default partition holds rows of the month, as the caller read it before the lock: True moves them
        (a read of the default partition), False creates the partition without looking (PostgreSQL's own
        check refuses it if a row of the month is there, and reads the default partition for it unless the
        default partition's constraints, `fence_default`, already exclude the month). None, for callers that
        did not read it: looked for first, in the default partition (a read of it).
        """
        name = self.partition_name(month)
        start, end = month_bounds(month)
        if rows_in_default is None:
            cursor.execute(
                f"SELECT 1 FROM {self.default_partition} WHERE {self.column} >= %s AND {self.column} < %s LIMIT 1",
                [start, end],
            )
            rows_in_default = cursor.fetchone() is not None
        if not rows_in_default:
            cursor.execute(f"CREATE TABLE {name} PARTITION OF {self.table} FOR VALUES FROM (%s) TO (%s)", [start, end])
        else:
            # The month's rows are in the default partition: a new partition for them would overlap it. Move
            # them into a plain table of the same shape, then attach that (its indexes are built once, on
            # attach). The move is a DELETE from the default partition: a table whose rows refuse deletes
            # (the journal) lets it through under playpay.partition_move.
            cursor.execute(f"CREATE TABLE {name} (LIKE {self.table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
            cursor.execute("SET LOCAL playpay.partition_move = 'on'")
            cursor.execute(
                f"WITH moved AS (DELETE FROM {self.default_partition} "
                f"WHERE {self.column} >= %s AND {self.column} < %s RETURNING *) "
                f"INSERT INTO {name} SELECT * FROM moved",
                [start, end],
            )
            cursor.execute("SET LOCAL playpay.partition_move = 'off'")
            cursor.execute(
                f"ALTER TABLE {self.table} ATTACH PARTITION {name} FOR VALUES FROM (%s) TO (%s)", [start, end]
            )
        for sql in self.partition_sql:
            cursor.execute(sql.format(partition=name))

    def fence_default(self, months: list[date]) -> bool:
        """Prove, before the months' partitions are created, that the default partition holds none of their
        rows, so that creating them does not read it.

        Creating a partition next to a default one makes PostgreSQL check that no row of the default
        partition belongs to the new range: a read of the whole default partition, under the ACCESS EXCLUSIVE
        lock the creation takes, unless a valid CHECK constraint of the default partition already implies it.
        So: a constraint excluding the months' ranges, added NOT VALID (a moment's exclusive lock, no read),
        then validated (the read, under a SHARE UPDATE EXCLUSIVE lock that lets rows in and reports run).
        It replaces any left by an earlier run; `ensure` drops it once the partitions exist, as a month
        archived later must again take its late rows into the default partition.

        While it stands, a row for one of these months is refused (they have no partition yet and the
        default partition no longer takes them): call it for months after the current one only, whose rows
        come from a sender's clock gone wrong. True when the constraint is valid; on any failure (a lock
        not granted in time, a row of one of the months found) there is none, and `ensure` leaves the months
        to its next run rather than read the default partition under the table's lock.
        """
        fence, default = self.default_fence, self.default_partition
        outside = " AND ".join(
            f"({self.column} < '{start.isoformat()}' OR {self.column} >= '{end.isoformat()}')"
            for start, end in map(month_bounds, months)
        )
        try:
            with transaction.atomic(using=self.using), self.connection.cursor() as cursor:
                cursor.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
                cursor.execute(f"ALTER TABLE {default} DROP CONSTRAINT IF EXISTS {fence}")
                cursor.execute(f"ALTER TABLE {default} ADD CONSTRAINT {fence} CHECK ({outside}) NOT VALID")
            with transaction.atomic(using=self.using), self.connection.cursor() as cursor:
                cursor.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
                cursor.execute(f"ALTER TABLE {default} VALIDATE CONSTRAINT {fence}")
        except DatabaseError:
            logger.warning("default partition not fenced", exc_info=True, extra={"table": self.table})
            self.drop_fence()
            return False
        return True

    def has_fence(self) -> bool:
        with self.connection.cursor() as cursor:
            cursor.execute(
                "SELECT 1 FROM pg_constraint WHERE conrelid = to_regclass(%s) AND conname = %s",
                [self.default_partition, self.default_fence],
            )
            return cursor.fetchone() is not None

    def drop_fence(self, cursor: Any | None = None) -> None:
        """Drop the default partition's fence, if any (in `cursor`'s transaction, else in one of its own)."""
        statement = f"ALTER TABLE {self.default_partition} DROP CONSTRAINT IF EXISTS {self.default_fence}"
        if cursor is not None:
            cursor.execute(statement)
            return
        with transaction.atomic(using=self.using), self.connection.cursor() as own:
            own.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
            own.execute(statement)

    def create_default_partition(self, cursor: Any) -> None:
        cursor.execute(f"CREATE TABLE {self.default_partition} PARTITION OF {self.table} DEFAULT")
        for sql in self.partition_sql:
            cursor.execute(sql.format(partition=self.default_partition))

    def ensure(
        self, *, now: datetime | None = None, months_ahead: int | None = None, since: date | None = None
    ) -> list[str]:
        """Create the partitions of this month and the next `months_ahead` (and of every month from `since`),
        and of the recent months found in the default partition; returns the names of those it created
        (none when all exist).

        Under the table's ACCESS EXCLUSIVE lock it reads the default partition's rows only to move a month out
        of it (a table that `moves_from_default`, a month found there beforehand) or to create this month or
        an earlier one (PostgreSQL's check); the months ahead are created on the fence's proof, nothing read.
        """
        if not self.is_partitioned():
            return []
        ahead = self.months_ahead if months_ahead is None else months_ahead
        this_month = month_start(now or timezone.now())
        first = month_start(since) if since is not None and since < this_month else this_month
        wanted = {add_months(first, n) for n in range(months_between(first, this_month) + ahead + 1)}
        oldest = add_months(this_month, -MONTHS_BACK)

        def missing(in_default: set[date]) -> list[date]:
            """The months to create: read from the catalog, given the months the default partition holds."""
            months = set(wanted)
            if self.moves_from_default:
                months |= {month for month in in_default if oldest <= month <= add_months(this_month, ahead)}
            else:
                months -= in_default  # left there: rows of these tables cannot leave a partition
            existing = set(self.partitions())
            return sorted(month for month in months if self.partition_name(month) not in existing)

        # The months the default partition holds rows of, read without the table's lock: on every run for a
        # table that moves them out (the months to move), only when a month is missing for one that does not.
        in_default: set[date] = set()
        if self.moves_from_default or missing(in_default):
            with self.connection.cursor() as cursor:
                in_default = set(self.default_months(cursor))
        created = missing(in_default)
        if not created:
            if self.has_fence():  # left by a run that stopped half-way
                self.drop_fence()
            self.analyze_stale()
            return []
        # The months after this one that the default partition holds no rows of (the usual run) are fenced
        # first: no row of theirs reaches it until their partitions exist, which are then created without
        # reading it. This month and earlier ones (missing only after `since`, or a job stopped for months)
        # are not: a fence would refuse their everyday rows; PostgreSQL reads the default partition to create
        # them. When the fence cannot be had, the months it was for wait for the next run.
        ahead_only = [month for month in created if month > this_month and month not in in_default]
        fenced = bool(ahead_only) and self.fence_default(ahead_only)
        deferred = set() if fenced else set(ahead_only)
        if set(created) - deferred:
            try:
                with transaction.atomic(using=self.using), self.connection.cursor() as cursor:
                    cursor.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
                    cursor.execute(f"LOCK TABLE {self.table} IN ACCESS EXCLUSIVE MODE")
                    # Again under the lock, from the catalog only: another run (the job, `manage.py partitions`)
                    # may have made some of them while this one waited for it. The default partition is not
                    # read again: a fenced month can have gained no row there since, and this month or an
                    # earlier one that did is refused by PostgreSQL's check (the next run sees its rows).
                    created = [month for month in missing(in_default) if month not in deferred]
                    for month in created:
                        self.create_partition(cursor, month, rows_in_default=month in in_default)
                    if fenced:
                        self.drop_fence(cursor)
            except BaseException:
                if fenced:  # the partitions were not made: their months' rows go to the default partition again
                    with contextlib.suppress(DatabaseError):
                        self.drop_fence()
                raise
        else:
            created = []
        self.analyze_stale()  # the ones rows were moved into, and any filled since the last run
        names = [self.partition_name(month) for month in created]
        if deferred:
            raise RuntimeError(
                f"{self.table}: the default partition was not fenced, partitions "
                f"{', '.join(self.partition_name(month) for month in sorted(deferred))} wait for the next run "
                f"(created: {', '.join(names) or 'none'})"
            )
        return names

    def analyze_stale(self, *, since: datetime | date | None = None) -> list[str]:
        """ANALYZE the partitions (of months from `since` on, and the default one) whose planner statistics
        are missing or stale; returns their names.

        A partition filled faster than autovacuum looks (a bulk load, a burst of ingestion) has none, or ones
        that say it is nearly empty, and a query planned on them can take a plan quadratic in its rows.
        ANALYZE reads a sample (some 30,000 rows), whatever the partition's size.
        """
        if not self.is_partitioned():
            return []
        first = self.partition_name(month_start(since)) if since is not None else f"{self.table}_p"
        with self.connection.cursor() as cursor:
            cursor.execute(
                STALE_PARTITIONS,
                [self.table, self.default_partition, first, ANALYZE_MIN_CHANGES, ANALYZE_CHANGED_SHARE],
            )
            stale = [row[0] for row in cursor.fetchall()]
            for name in stale:
                cursor.execute(f"ANALYZE {name}")
        return stale

    def months_before(self, cutoff: datetime) -> list[date]:
        """The months whose partitions hold nothing newer than `cutoff` (their end is at or before it)."""
        return [month for month in self.months() if month_bounds(month)[1] <= cutoff]

    def archive_path(self, month: date, directory: Path) -> Path:
        """Where the month's next archive goes: `<partition>.csv.gz`, or `<partition>.<n>.csv.gz` (n = 2, 3, …)
        when the month was archived before. Rows of an archived month can still arrive late (a sender's
        old timestamp), land in the default partition and be given the month's partition again: their
        archive goes next to the first one, never over it."""
        name = self.partition_name(month)
        path = directory / f"{name}.csv.gz"
        n = 1
        while path.exists():
            n += 1
            path = directory / f"{name}.{n}.csv.gz"
        return path

    def archive(self, month: date, directory: Path) -> Archived:
        """Detach the month's partition, copy its rows to a new file `archive_path` names (a gzip'ed CSV with a
        header), check the file holds as many rows as the partition, then drop the partition.

        A failed check leaves the partition detached (a plain table, outside the parent's queries) and
        raises: nothing is dropped that is not in the file. Run again, it takes up a detached partition.
        An existing archive file is never written over.
        """
        name = self.partition_name(month)
        directory.mkdir(parents=True, exist_ok=True)
        path = self.archive_path(month, directory)
        with self.connection.cursor() as cursor:
            if name in self.partitions():
                self.refuse_unsettled(month)
                with transaction.atomic(using=self.using):
                    cursor.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
                    self._release(cursor, name)
                    cursor.execute(f"ALTER TABLE {self.table} DETACH PARTITION {name}")
            cursor.execute(f"SELECT count(*) FROM {name}")
            rows = int(cursor.fetchone()[0])
            partial = path.with_name(path.name + ".partial")
            with gzip.open(partial, "wb") as archive:
                raw = cursor.cursor  # psycopg's own cursor: COPY streams without building the file in memory
                with raw.copy(f"COPY (SELECT * FROM {name} ) TO STDOUT WITH (FORMAT csv, HEADER)") as copy:
                    for chunk in copy:
                        archive.write(chunk)
            written = sum(1 for _ in read_archive(partial))
            if written != rows:
                raise RuntimeError(f"{name}: {written} rows in the archive, {rows} in the table; kept detached")
            try:
                # A link, unlike a rename, refuses an existing name: an archive made meanwhile by another run
                # stays as it is, and this partition stays detached for the next run.
                os.link(partial, path)
            except FileExistsError:
                raise RuntimeError(f"{name}: {path} appeared meanwhile; kept detached, run again") from None
            partial.unlink()
            cursor.execute(f"DROP TABLE {name}")
        logger.info("partition archived", extra={"partition": name, "rows": rows, "path": str(path)})
        return Archived(partition=name, rows=rows, path=path)

    def drop(self, month: date) -> int:
        """Detach and drop the month's partition, its rows gone for good (a retention past which nothing is
        kept); returns how many rows it held."""
        name = self.partition_name(month)
        with transaction.atomic(using=self.using), self.connection.cursor() as cursor:
            cursor.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
            self._release(cursor, name)
            cursor.execute(f"ALTER TABLE {self.table} DETACH PARTITION {name}")
            cursor.execute(f"SELECT count(*) FROM {name}")
            rows = int(cursor.fetchone()[0])
            cursor.execute(f"DROP TABLE {name}")
        logger.info("partition dropped", extra={"partition": name, "rows": rows})
        return rows

    def refuse_unsettled(self, month: date) -> None:
        """Raise MonthUnsettled while the `unsettled` query counts anything still moving in the month."""
        if not self.unsettled:
            return
        start, end = month_bounds(month)
        with self.connection.cursor() as cursor:
            cursor.execute(self.unsettled, {"start": start, "end": end})
            moving = int(cursor.fetchone()[0])
        if moving:
            raise MonthUnsettled(
                f"{self.partition_name(month)}: {moving} row(s) of the month are not settled yet "
                "(see the table's `unsettled` rule); archive the month once they are"
            )

    def _release(self, cursor: Any, partition: str) -> None:
        for sql in self.released:
            cursor.execute(sql.format(partition=partition))

    def detached(self) -> list[str]:
        """Monthly partitions of this table left detached by an archive that did not finish."""
        if not self.is_partitioned():
            return []
        with self.connection.cursor() as cursor:
            cursor.execute(
                "SELECT c.relname FROM pg_class c WHERE c.relkind = 'r' AND c.relname LIKE %s "
                "AND NOT c.relispartition ORDER BY 1",
                [f"{self.table}\\_p%"],
            )
            return [row[0] for row in cursor.fetchall()]


class IdMonths:
    """Which months' partitions can hold the row of a given id, for a partitioned table whose ids come from
    a sequence: a read by id alone cannot be pruned to a month, so PostgreSQL plans and probes every
    partition (at 22 months, ~10 ms of planning for a read that takes 0.2 ms naming its month).

    Ids grow with time, so each month's partition holds a range of them. A snapshot of every partition's
    first and last id (two index lookups each), kept `max_age` seconds per process, tells the months a
    given id can be in: those whose range holds it; for an id newer than the snapshot, the newest month
    with rows and after. It is a hint, never the truth: a row can be made after the snapshot in an older
    month (a backdated import), so `get` falls back to every partition when the hinted months miss, and
    takes a new snapshot. Elsewhere than PostgreSQL there is nothing to narrow.
    """

    def __init__(self, table: PartitionedTable, *, max_age: float = 300.0) -> None:
        self.table = table
        self.max_age = max_age
        self._snapshots: dict[tuple[str, str], tuple[float, list[tuple[int, int, date]], int]] = {}

    def _snapshot(self) -> tuple[list[tuple[int, int, date]], int]:
        """(first id, last id, month) of each monthly partition with rows, and the last id of all (the
        default partition's range is returned as month `date.min`)."""
        key = (self.table.using, str(self.table.connection.settings_dict["NAME"]))
        now = time.monotonic()
        cached = self._snapshots.get(key)
        if cached is not None and now - cached[0] < self.max_age:
            return cached[1], cached[2]
        names = self.table.partitions()
        spans: list[tuple[int, int, date]] = []
        if names:
            union = " UNION ALL ".join(f"SELECT %s, min(id), max(id) FROM {name}" for name in names)
            with self.table.connection.cursor() as cursor:
                cursor.execute(union, names)
                for name, first, last in cursor.fetchall():
                    if first is not None:
                        spans.append((first, last, self.table.month_of(name) or date.min))
        last_id = max((span[1] for span in spans), default=0)
        self._snapshots[key] = (now, spans, last_id)
        return spans, last_id

    def forget(self) -> None:
        self._snapshots.clear()

    def bounds(self, pk: int) -> tuple[datetime, datetime | None] | None:
        """[start, end) of `table.column` for the months that can hold id `pk` (end None: open), or None
        when no month can be named (not partitioned, the id in the default partition's range or unknown)."""
        if not self.table.is_partitioned():
            return None
        spans, last_id = self._snapshot()
        if pk > last_id:
            newest = max((month for _, _, month in spans), default=None)
            if newest is None or newest == date.min:
                return None
            return month_bounds(newest)[0], None
        months = [month for first, last, month in spans if first <= pk <= last]
        if not months or date.min in months:
            return None
        return month_bounds(min(months))[0], month_bounds(max(months))[1]

    def filters(self, pk: int) -> tuple[dict[str, Any], bool]:
        """The filters of the row of id `pk` in the months that can hold it; and whether months were named."""
        filters: dict[str, Any] = {"pk": pk}
        bounds = self.bounds(pk)
        if bounds is None:
            return filters, False
        start, end = bounds
        filters[f"{self.table.column}__gte"] = start
        if end is not None:
            filters[f"{self.table.column}__lt"] = end
        return filters, True

    def get(self, rows: "QuerySet[M] | CompiledRead[M]", pk: int) -> M:
        """The row of id `pk` from `rows` (locked if it locks), read from its months; from every month when
        they miss it. Raises the model's DoesNotExist when there is none."""
        filters, named = self.filters(pk)
        try:
            return rows.get(**filters)
        except ObjectDoesNotExist:
            if not named:
                raise
        self.forget()
        return rows.get(pk=pk)


def read_archive(path: Path) -> Iterator[dict[str, str]]:
    """The rows of an archive file, as the CSV header names them."""
    with gzip.open(path, "rb") as raw:
        yield from csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8", newline=""))


_REGISTRY: dict[str, PartitionedTable] = {}


def register(table: PartitionedTable) -> PartitionedTable:
    _REGISTRY[table.table] = table
    return table


def registered() -> list[PartitionedTable]:
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


def get(table: str) -> PartitionedTable:
    try:
        return _REGISTRY[table]
    except KeyError:
        raise LookupError(f"{table} is not a partitioned table; they are {sorted(_REGISTRY)}") from None


def ensure_all(*, now: datetime | None = None) -> list[str]:
    """The periodic job: partitions ahead for every partitioned table; names of those created.

    One table's failure (a lock not granted in time) does not keep the others waiting; the job then fails
    naming it, and the next run tries it again.
    """
    created: list[str] = []
    failed: list[str] = []
    for table in registered():
        try:
            created += table.ensure(now=now)
        except Exception:
            logger.exception("partitions not created", extra={"table": table.table})
            failed.append(table.table)
    if failed:
        raise RuntimeError(f"partitions not created for {', '.join(failed)} (created: {', '.join(created) or 'none'})")
    return created


def _set_aside(cursor: Any, table: str) -> list[tuple[str, str]]:
    """Rename the table, its primary key and indexes out of the way of the new table's; returns its other
    indexes as (name, definition) to build again on the new table."""
    plain = f"{table}_unpartitioned"
    cursor.execute(
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() AND tablename = %s "
        "AND indexname <> %s ORDER BY 1",
        [table, f"{table}_pkey"],
    )
    indexes = [(name, definition) for name, definition in cursor.fetchall()]
    cursor.execute(f"ALTER TABLE {table} RENAME TO {plain}")
    cursor.execute(f"ALTER TABLE {plain} RENAME CONSTRAINT {table}_pkey TO {plain}_pkey")
    for name, _ in indexes:
        cursor.execute(f'ALTER INDEX "{name}" RENAME TO "{name[:59]}_old"')
    return indexes


def _index_on(definition: str) -> str:
    """An index definition read from the table before it was set aside: it names the table by its own name
    (a partitioned table's reads `ON ONLY`, which would leave its partitions without the index)."""
    return definition.replace(" ON ONLY ", " ON ", 1)


def _drop_set_aside(cursor: Any, table: str) -> None:
    cursor.execute(f"DROP TABLE {table}_unpartitioned")
    # The new identity's sequence takes the usual name and carries on after the copied ids.
    cursor.execute("SELECT pg_get_serial_sequence(%s, 'id')", [table])
    sequence = cursor.fetchone()[0]
    if sequence is None:
        return
    if sequence.rpartition(".")[2] != f"{table}_id_seq":
        cursor.execute(f"ALTER SEQUENCE {sequence} RENAME TO {table}_id_seq")
    cursor.execute(f"SELECT setval('{table}_id_seq', coalesce(max(id), 0) + 1, false) FROM {table}")


def partition_existing(
    cursor: Any, table: PartitionedTable, *, now: datetime | None = None, months_of: tuple[str, str] | None = None
) -> None:
    """Turn the plain table into one partitioned by month, its rows copied over (for a migration).

    Its primary key becomes (id, <column>), as a partitioned table's must include the partition key; its
    indexes and its foreign keys keep their names (a unique index must include the partition key too). Its
    triggers go with the old table: the caller declares them again. A table other tables refer to by foreign
    key cannot be rebuilt so (their keys would have to include the partition key): refused. Partitions are
    made for the months that hold rows (back to MONTHS_BACK), and those of `months_of` (table, column) (the
    months of the rows its rows belong to), this month and the months ahead; older rows go to the default one.
    """
    name, plain = table.table, f"{table.table}_unpartitioned"
    cursor.execute("SELECT conname FROM pg_constraint WHERE contype = 'f' AND confrelid = %s::regclass", [name])
    referring = [row[0] for row in cursor.fetchall()]
    if referring:
        raise RuntimeError(f"{name} is referred to by foreign keys {referring}: it cannot be partitioned as is")
    foreign_keys = _foreign_keys(cursor, name)
    indexes = _set_aside(cursor, name)
    cursor.execute(
        f"CREATE TABLE {name} (LIKE {plain} INCLUDING DEFAULTS INCLUDING IDENTITY INCLUDING CONSTRAINTS) "
        f"PARTITION BY RANGE ({table.column})"
    )
    cursor.execute(f"ALTER TABLE {name} ADD CONSTRAINT {name}_pkey PRIMARY KEY (id, {table.column})")
    for _, definition in indexes:
        cursor.execute(_index_on(definition))
    table.create_default_partition(cursor)
    this_month = month_start(now or timezone.now())
    cursor.execute(
        f"SELECT DISTINCT date_trunc('month', {table.column} AT TIME ZONE 'UTC')::date FROM {plain} "
        f"WHERE {table.column} >= %s",
        [add_months(this_month, -MONTHS_BACK)],
    )
    months = {row[0] for row in cursor.fetchall()} | {add_months(this_month, n) for n in range(table.months_ahead + 1)}
    if months_of is not None:
        other, column = months_of
        cursor.execute(
            f"SELECT DISTINCT date_trunc('month', {column} AT TIME ZONE 'UTC')::date FROM {other} WHERE {column} >= %s",
            [add_months(this_month, -MONTHS_BACK)],
        )
        months |= {row[0] for row in cursor.fetchall()}
    for month in sorted(months):
        table.create_partition(cursor, month)
    cursor.execute(f"INSERT INTO {name} OVERRIDING SYSTEM VALUE SELECT * FROM {plain}")
    _drop_set_aside(cursor, name)
    _add_foreign_keys(cursor, name, foreign_keys)


def _foreign_keys(cursor: Any, table: str) -> list[tuple[str, str]]:
    cursor.execute(
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE contype = 'f' AND conrelid = %s::regclass "
        "AND conparentid = 0 ORDER BY 1",
        [table],
    )
    return [(name, definition) for name, definition in cursor.fetchall()]


def _add_foreign_keys(cursor: Any, table: str, foreign_keys: list[tuple[str, str]]) -> None:
    for constraint, definition in foreign_keys:
        cursor.execute(f'ALTER TABLE {table} ADD CONSTRAINT "{constraint}" {definition}')


def unpartition_existing(cursor: Any, table: PartitionedTable) -> None:
    """The reverse of `partition_existing`: one plain table again, primary key (id), same indexes."""
    name, plain = table.table, f"{table.table}_unpartitioned"
    foreign_keys = _foreign_keys(cursor, name)
    indexes = _set_aside(cursor, name)
    cursor.execute(f"CREATE TABLE {name} (LIKE {plain} INCLUDING DEFAULTS INCLUDING IDENTITY INCLUDING CONSTRAINTS)")
    cursor.execute(f"INSERT INTO {name} OVERRIDING SYSTEM VALUE SELECT * FROM {plain}")
    cursor.execute(f"ALTER TABLE {name} ADD CONSTRAINT {name}_pkey PRIMARY KEY (id)")
    for _, definition in indexes:
        cursor.execute(_index_on(definition))
    _drop_set_aside(cursor, name)
    _add_foreign_keys(cursor, name, foreign_keys)
