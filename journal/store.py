"""The journal's one small interface, and its two backends: SQL (PostgreSQL JSONB) and MongoDB.

A document: {"occurred_at": ISO-8601, "record_id": UUID, "kind": str, "correlation": {payment_id, refund_id,
journey_id, request_id, app, carrier, carrier_reference, msisdn_hash}, "data": {...}}.
The interface has no update or delete: the journal is append-only. A write is idempotent: a document whose
record_id the store holds already is not stored again (documents written before record ids have none).
"""

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any, Protocol

from django.conf import settings
from django.db import connections, transaction
from django.db.models import Avg, Case, Count, F, FloatField, IntegerField, Max, Min, Sum, TextField, Value, When
from django.db.models.fields.json import KeyTextTransform, KeyTransform
from django.db.models.functions import Cast, Trunc
from django.db.models.lookups import In

# Expiry deletes rows in batches of this many, each its own transaction under this statement timeout (far
# above what a batch takes: a bound for a hang, not a deadline the work must meet).
EXPIRY_BATCH_ROWS = 10_000
EXPIRY_STATEMENT_TIMEOUT = "60s"

CORRELATION_FIELDS = (
    "payment_id",
    "refund_id",
    "journey_id",
    "request_id",
    "app",
    "user_ref",
    "carrier",
    "carrier_reference",
    "msisdn_hash",
)
GROUPABLE = ("kind", "app", "carrier")
DUPLICATE_KEY = 11000  # MongoDB's error code for a unique index (the _id's) refusing a document


@dataclass(frozen=True)
class JournalQuery:
    correlation: Mapping[str, str] | None = None
    kind: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 200

    def __post_init__(self) -> None:
        for name in self.correlation or {}:
            if name not in CORRELATION_FIELDS:
                raise ValueError(f"{name!r} is not a correlation id")


def check_groupable(by: str) -> None:
    if by not in GROUPABLE:
        raise ValueError(f"counts are by one of {GROUPABLE}")


@dataclass(frozen=True)
class DocumentField:
    """A value of a journal document for aggregation: a dotted path (`data.latency_ms`,
    `correlation.carrier`), read as text or cast to a number; with `flag_values`, 1 where
    the value is one of them and 0 elsewhere (summed it counts, averaged it is a share)."""

    path: str
    cast: str = "text"  # text, int or float
    flag_values: tuple[Any, ...] = ()


AGGREGATIONS = ("count", "count_distinct", "sum", "avg", "min", "max")
BUCKETS = ("hour", "day", "week", "month")


@dataclass(frozen=True)
class JournalAggregate:
    """Group the documents of one kind in a period by fields and a time bucket, and aggregate.

    Result rows carry the group names, "bucket" (a datetime, when bucketed) and the measure names.
    A count measure without a field counts documents; with one, the documents where it is present.
    """

    kind: str
    since: datetime | None = None
    until: datetime | None = None
    filters: Mapping[str, tuple[DocumentField, Sequence[str]]] | None = None
    group: Mapping[str, DocumentField] | None = None
    bucket: str | None = None
    timezone: str = "UTC"
    measures: Mapping[str, tuple[str, DocumentField | None]] | None = None

    def __post_init__(self) -> None:
        """What both stores refuse, checked once."""
        if self.bucket and self.bucket not in BUCKETS:
            raise ValueError(f"time buckets are {BUCKETS}")
        for aggregation, measured in (self.measures or {}).values():
            if aggregation not in AGGREGATIONS:
                raise ValueError(f"aggregations are {AGGREGATIONS}")
            if measured is None and aggregation != "count":
                raise ValueError("only a count can do without a field")


class JournalStore(Protocol):
    def write(self, documents: Sequence[Mapping[str, Any]]) -> None: ...

    def query(self, query: JournalQuery) -> list[dict[str, Any]]:
        """Matching documents, newest first."""
        ...

    def count(self, *, by: str, query: JournalQuery) -> dict[str, int]:
        """How many matching documents per value of `by` (kind, app or carrier)."""
        ...

    def purge(self, *, before: datetime) -> int:
        """Retention: drop everything older than `before`; returns how many went."""
        ...

    def expire(self, *, cutoffs: Mapping[str, datetime], default_cutoff: datetime) -> int:
        """Retention per kind: drop the documents of each kind in `cutoffs` older than its cutoff, and those of
        every other kind older than `default_cutoff`; returns how many went."""
        ...

    def aggregate(self, spec: JournalAggregate) -> list[dict[str, Any]]:
        """Grouped aggregates computed by the store itself (no documents come back)."""
        ...


def _delete_batch(records: Any) -> int:
    """Delete up to EXPIRY_BATCH_ROWS of `records` in a transaction of its own: millions of expired rows go
    in short statements that each hold their locks briefly and commit, bound by a statement timeout."""
    connection = connections["journal"]
    with transaction.atomic(using="journal"):
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:  # the append-only trigger lets a purge through
                cursor.execute("SET LOCAL playpay.journal_purge = 'on'")
                cursor.execute(f"SET LOCAL statement_timeout = '{EXPIRY_STATEMENT_TIMEOUT}'")
        ids = list(records.order_by().values_list("id", flat=True)[:EXPIRY_BATCH_ROWS])
        if not ids:
            return 0
        # The records' own filter again: on PostgreSQL it keeps the delete to the partitions they are in.
        return int(records.filter(id__in=ids).delete()[0])


class SqlJournalStore:
    """Documents as JSON(B) rows of `journal.JournalRecord`, in the journal's own database alias."""

    def write(self, documents: Sequence[Mapping[str, Any]]) -> None:
        # No ORM round trip through models (this runs on every API request): one INSERT for a record, one COPY for
        # a batch (a spool segment) on PostgreSQL. A document whose record id is stored already is skipped.
        from journal.models import JournalRecord

        connection = connections["journal"]
        record_id_field = JournalRecord._meta.get_field("record_id")
        document_field = JournalRecord._meta.get_field("document")
        columns = ["occurred_at", "record_id", "kind", *CORRELATION_FIELDS, "document"]
        rows = [
            (
                datetime.fromisoformat(document["occurred_at"]),
                record_id_field.get_db_prep_save(document.get("record_id"), connection),
                document["kind"],
                *(str(document["correlation"].get(name) or "")[:128] for name in CORRELATION_FIELDS),
                document_field.get_db_prep_save(dict(document), connection),
            )
            for document in documents
        ]
        table = connection.ops.quote_name(JournalRecord._meta.db_table)
        names = ", ".join(connection.ops.quote_name(column) for column in columns)
        if connection.vendor == "postgresql" and len(rows) > 1:
            # A batch (a spool segment): one COPY, far cheaper per row than an INSERT each. COPY cannot skip a
            # row: if the store holds one of them already (the segment shipped before, its acknowledgement
            # lost), the COPY is undone and the rows go by INSERTs that skip it.
            from psycopg.errors import UniqueViolation

            try:
                with (
                    transaction.atomic(using="journal"),
                    connection.cursor() as cursor,
                    cursor.cursor.copy(f"COPY {table} ({names}) FROM STDIN") as copy,
                ):
                    for row in rows:
                        copy.write_row(row)
                return
            except UniqueViolation:
                pass
        sql = (
            f"INSERT INTO {table} ({names}) VALUES ({', '.join(['%s'] * len(columns))}) "  # noqa: S608
            "ON CONFLICT (record_id, occurred_at) DO NOTHING"
        )
        with connection.cursor() as cursor:
            if len(rows) == 1:  # a request's record: executemany's pipeline costs more than it saves for one row
                cursor.execute(sql, rows[0])
            else:
                cursor.executemany(sql, rows)

    def _filter(self, query: JournalQuery) -> Any:
        from journal.models import JournalRecord

        records = JournalRecord.objects.all()
        for name, value in (query.correlation or {}).items():
            records = records.filter(**{name: value})
        if query.kind:
            records = records.filter(kind=query.kind)
        if query.since:
            records = records.filter(occurred_at__gte=query.since)
        if query.until:
            records = records.filter(occurred_at__lt=query.until)
        return records

    def query(self, query: JournalQuery) -> list[dict[str, Any]]:
        rows = self._filter(query).order_by("-occurred_at", "-id").values_list("document", flat=True)[: query.limit]
        return [dict(row) for row in rows]

    def count(self, *, by: str, query: JournalQuery) -> dict[str, int]:
        check_groupable(by)
        rows = self._filter(query).values(by).annotate(n=Count("id")).order_by(by)
        return {row[by]: row["n"] for row in rows}

    def purge(self, *, before: datetime) -> int:
        return self.expire(cutoffs={}, default_cutoff=before)

    def expire(self, *, cutoffs: Mapping[str, datetime], default_cutoff: datetime) -> int:
        from journal.models import JournalRecord
        from journal.partitions import RECORDS

        # Months past every kind's cutoff go whole: a partition dropped, no row deleted one by one.
        deleted = sum(RECORDS.drop(month) for month in RECORDS.months_before(min([default_cutoff, *cutoffs.values()])))
        expired = [JournalRecord.objects.filter(kind=kind, occurred_at__lt=cutoff) for kind, cutoff in cutoffs.items()]
        expired.append(JournalRecord.objects.exclude(kind__in=list(cutoffs)).filter(occurred_at__lt=default_cutoff))
        for records in expired:
            while True:
                removed = _delete_batch(records)
                deleted += removed
                if removed < EXPIRY_BATCH_ROWS:
                    break
        return int(deleted)

    def aggregate(self, spec: JournalAggregate) -> list[dict[str, Any]]:
        from zoneinfo import ZoneInfo

        records = self._filter(JournalQuery(kind=spec.kind, since=spec.since, until=spec.until))
        for document_field, values in (spec.filters or {}).values():
            # The plain IN of SQL: a `__in` on a JSON key would read the values as JSON (SQLite: "malformed JSON").
            records = records.filter(In(_sql_text(document_field), [str(value) for value in values]))
        # Positional aliases: the caller's names need not be valid SQL aliases.
        names: dict[str, str] = {}
        group: dict[str, Any] = {}
        for index, (name, document_field) in enumerate((spec.group or {}).items()):
            names[f"g{index}"] = name
            group[f"g{index}"] = _sql_value(document_field)
        if spec.bucket:
            names["t_bucket"] = "bucket"
            group["t_bucket"] = Trunc("occurred_at", spec.bucket, tzinfo=ZoneInfo(spec.timezone))
        measures = {}
        for index, (name, (aggregation, measured)) in enumerate((spec.measures or {}).items()):
            names[f"m{index}"] = name
            measures[f"m{index}"] = _sql_aggregate(aggregation, measured)
        if group:
            rows = records.annotate(**group).values(*group).annotate(**measures).order_by(*group)
            result = list(rows)
        else:
            result = [records.aggregate(**measures)] if measures else []
        return [{names[key]: value for key, value in row.items()} for row in result]


def _sql_text(document_field: DocumentField) -> Any:
    """The value as text, the same on both engines: PostgreSQL's ->> reads a number or a boolean as its JSON
    text ('200', 'true'); SQLite's JSON_EXTRACT reads a number as a number, which no text equals."""
    parts = document_field.path.split(".")
    if parts[0] == "correlation" and len(parts) == 2 and parts[1] in CORRELATION_FIELDS:
        return F(parts[1])  # a column of its own, indexed
    if parts == ["kind"]:
        return F("kind")
    expression: Any = "document"
    for part in parts[:-1]:
        expression = KeyTransform(part, expression)
    return Cast(KeyTextTransform(parts[-1], expression), TextField())


def _sql_value(document_field: DocumentField) -> Any:
    text = _sql_text(document_field)
    if document_field.flag_values:
        # JSON scalars read as text: true/false for booleans, the string itself for strings.
        values = [json.dumps(v) if isinstance(v, bool) else str(v) for v in document_field.flag_values]
        return Case(When(In(text, values), then=Value(1)), default=Value(0), output_field=IntegerField())
    if document_field.cast == "int":
        return Cast(text, IntegerField())
    if document_field.cast == "float":
        return Cast(text, FloatField())
    return text


def _sql_aggregate(aggregation: str, document_field: DocumentField | None) -> Any:
    if document_field is None:  # a count (JournalAggregate checked it)
        return Count("id")
    value = _sql_value(document_field)
    if aggregation in ("count", "count_distinct"):
        return Count(value, distinct=aggregation == "count_distinct")
    return {"sum": Sum, "avg": Avg, "min": Min, "max": Max}[aggregation](value)


class MongoJournalStore:
    """The same interface over a MongoDB collection (pymongo), with the same indexes."""

    def __init__(self, url: str, collection: str = "journal", ttl_days: Mapping[str, int] | None = None) -> None:
        import pymongo

        client: Any = pymongo.MongoClient(url, serverSelectionTimeoutMS=3000, timeoutMS=5000, tz_aware=True)
        database = client.get_default_database(default="playpay")
        self.collection = database[collection]
        for fields in (
            [("kind", 1), ("occurred_at", -1)],
            [("app", 1), ("occurred_at", -1)],
            [("carrier", 1), ("occurred_at", -1)],
            *([(f"correlation.{name}", 1), ("occurred_at", -1)] for name in CORRELATION_FIELDS),
        ):
            self.collection.create_index(fields)
        for kind, days in (ttl_days or {}).items():
            self._ttl_index(kind, days)

    def _ttl_index(self, kind: str, days: int) -> None:
        """MongoDB's own retention per kind: a partial TTL index for the kind's documents (a kind without one
        is expired by `expire`, the daily job). A changed TTL updates the index in place."""
        from pymongo.errors import OperationFailure

        name = f"ttl_{kind}"
        try:
            self.collection.create_index(
                [("occurred_at", 1)],
                name=name,
                expireAfterSeconds=days * 86400,
                partialFilterExpression={"kind": kind},
            )
        except OperationFailure as exc:
            if exc.code not in (85, 86):  # IndexOptionsConflict, IndexKeySpecsConflict: the TTL changed
                raise
            self.collection.database.command(
                "collMod", self.collection.name, index={"name": name, "expireAfterSeconds": days * 86400}
            )

    def write(self, documents: Sequence[Mapping[str, Any]]) -> None:
        rows = []
        for document in documents:
            row = dict(document)
            row["occurred_at"] = datetime.fromisoformat(document["occurred_at"])
            row["app"], row["carrier"] = (
                document["correlation"].get("app", ""),
                document["correlation"].get("carrier", ""),
            )
            if document.get("record_id"):
                row["_id"] = document["record_id"]  # a document written again is refused as a duplicate key
            rows.append(row)
        if not rows:
            return
        from pymongo.errors import BulkWriteError

        try:
            self.collection.insert_many(rows, ordered=False)  # the others still go in past a duplicate
        except BulkWriteError as exc:
            if not only_duplicates(exc):
                raise

    def _filter(self, query: JournalQuery) -> dict[str, Any]:
        match: dict[str, Any] = {}
        for name, value in (query.correlation or {}).items():
            match[f"correlation.{name}"] = value
        if query.kind:
            match["kind"] = query.kind
        period = {key: value for key, value in (("$gte", query.since), ("$lt", query.until)) if value}
        if period:
            match["occurred_at"] = period
        return match

    def query(self, query: JournalQuery) -> list[dict[str, Any]]:
        cursor = self.collection.find(self._filter(query), {"_id": 0, "app": 0, "carrier": 0})
        documents = []
        for row in cursor.sort([("occurred_at", -1), ("_id", -1)]).limit(query.limit):
            row["occurred_at"] = row["occurred_at"].isoformat()
            documents.append(row)
        return documents

    def purge(self, *, before: datetime) -> int:
        return int(self.collection.delete_many({"occurred_at": {"$lt": before}}).deleted_count)

    def expire(self, *, cutoffs: Mapping[str, datetime], default_cutoff: datetime) -> int:
        deleted = 0
        for kind, cutoff in cutoffs.items():
            deleted += self.collection.delete_many({"kind": kind, "occurred_at": {"$lt": cutoff}}).deleted_count
        others = {"kind": {"$nin": list(cutoffs)}, "occurred_at": {"$lt": default_cutoff}}
        return int(deleted + self.collection.delete_many(others).deleted_count)

    def count(self, *, by: str, query: JournalQuery) -> dict[str, int]:
        check_groupable(by)
        pipeline = [{"$match": self._filter(query)}, {"$group": {"_id": f"${by}", "n": {"$sum": 1}}}]
        return {row["_id"]: row["n"] for row in self.collection.aggregate(pipeline)}

    def aggregate(self, spec: JournalAggregate) -> list[dict[str, Any]]:
        match = self._filter(JournalQuery(kind=spec.kind, since=spec.since, until=spec.until))
        for document_field, values in (spec.filters or {}).values():
            match[document_field.path] = {"$in": [_mongo_filter_value(document_field, v) for v in values]}
        group_id: dict[str, Any] = {name: _mongo_value(f) for name, f in (spec.group or {}).items()}
        if spec.bucket:
            group_id["bucket"] = {
                "$dateTrunc": {
                    "date": "$occurred_at",
                    "unit": spec.bucket,
                    "timezone": spec.timezone,
                    "startOfWeek": "monday",  # ISO weeks, as PostgreSQL's date_trunc
                }
            }
        accumulators: dict[str, Any] = {}
        distinct: list[str] = []
        for name, (aggregation, measured) in (spec.measures or {}).items():
            if measured is None:  # a count (JournalAggregate checked it)
                accumulators[name] = {"$sum": 1}
                continue
            value = _mongo_value(measured)
            if aggregation == "count":
                accumulators[name] = {"$sum": {"$cond": [{"$eq": [{"$ifNull": [value, None]}, None]}, 0, 1]}}
            elif aggregation == "count_distinct":
                accumulators[name] = {"$addToSet": value}
                distinct.append(name)
            else:
                accumulators[name] = {f"${aggregation}": value}
        pipeline: list[dict[str, Any]] = [{"$match": match}, {"$group": {"_id": group_id or None, **accumulators}}]
        pipeline.append({"$sort": {f"_id.{name}": 1 for name in group_id} or {"_id": 1}})
        rows = []
        for row in self.collection.aggregate(pipeline):
            keys = row.pop("_id") or {}
            for name in distinct:
                row[name] = len([v for v in row[name] if v is not None])
            rows.append({**keys, **row})
        return rows


def only_duplicates(error: Any) -> bool:
    """Whether a bulk write failed only on documents the collection holds already (their _id taken)."""
    details = error.details
    return not details.get("writeConcernErrors") and all(
        failure.get("code") == DUPLICATE_KEY for failure in details.get("writeErrors", [])
    )


def _mongo_value(document_field: DocumentField) -> Any:
    path = f"${document_field.path}"
    if document_field.flag_values:
        return {"$cond": [{"$in": [path, list(document_field.flag_values)]}, 1, 0]}
    if document_field.cast == "int":
        return {"$toLong": path}
    if document_field.cast == "float":
        return {"$toDouble": path}
    return path


def _mongo_filter_value(document_field: DocumentField, value: str) -> Any:
    if document_field.cast == "int":
        return int(value)
    if document_field.cast == "float":
        return float(value)
    return value


@cache
def journal_store() -> JournalStore:
    """The configured store: MongoDB for a mongodb:// JOURNAL_URL, else the SQL one."""
    if settings.JOURNAL_BACKEND == "mongodb":
        return MongoJournalStore(settings.JOURNAL_URL, ttl_days=settings.JOURNAL_TTL_DAYS)
    return SqlJournalStore()
