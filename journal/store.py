"""The journal's one small interface, and its two backends: SQL (PostgreSQL JSONB) and MongoDB.

A document: {"occurred_at": ISO-8601, "kind": str, "correlation": {payment_id, refund_id,
journey_id, request_id, app, carrier, carrier_reference, msisdn_hash}, "data": {...}}.
The interface has no update or delete: the journal is append-only.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any, Protocol

from django.conf import settings
from django.db import connections, transaction
from django.db.models import Count

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


@dataclass(frozen=True)
class JournalQuery:
    correlation: Mapping[str, str] | None = None
    kind: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 200


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


class SqlJournalStore:
    """Documents as JSON(B) rows of `journal.JournalRecord`, in the journal's own database alias."""

    def write(self, documents: Sequence[Mapping[str, Any]]) -> None:
        # One plain INSERT per batch: this runs on every API request, so no ORM round trip through models.
        from journal.models import JournalRecord

        connection = connections["journal"]
        document_field = JournalRecord._meta.get_field("document")
        columns = ["occurred_at", "kind", *CORRELATION_FIELDS, "document"]
        rows = [
            (
                datetime.fromisoformat(document["occurred_at"]),
                document["kind"],
                *(str(document["correlation"].get(name) or "")[:128] for name in CORRELATION_FIELDS),
                document_field.get_db_prep_save(dict(document), connection),
            )
            for document in documents
        ]
        sql = "INSERT INTO {} ({}) VALUES ({})".format(  # noqa: S608 - quoted identifiers, bound values
            connection.ops.quote_name(JournalRecord._meta.db_table),
            ", ".join(connection.ops.quote_name(column) for column in columns),
            ", ".join(["%s"] * len(columns)),
        )
        with connection.cursor() as cursor:
            cursor.executemany(sql, rows)

    def _filter(self, query: JournalQuery) -> Any:
        from journal.models import JournalRecord

        records = JournalRecord.objects.all()
        for name, value in (query.correlation or {}).items():
            if name not in CORRELATION_FIELDS:
                raise ValueError(f"{name!r} is not a correlation id")
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
        if by not in GROUPABLE:
            raise ValueError(f"counts are by one of {GROUPABLE}")
        rows = self._filter(query).values(by).annotate(n=Count("id")).order_by(by)
        return {row[by]: row["n"] for row in rows}

    def purge(self, *, before: datetime) -> int:
        from journal.models import JournalRecord

        connection = connections["journal"]
        with transaction.atomic(using="journal"):
            if connection.vendor == "postgresql":
                with connection.cursor() as cursor:  # the append-only trigger lets a purge through
                    cursor.execute("SET LOCAL playpay.journal_purge = 'on'")
            deleted, _ = JournalRecord.objects.filter(occurred_at__lt=before).delete()
        return int(deleted)


class MongoJournalStore:
    """The same interface over a MongoDB collection (pymongo), with the same indexes."""

    def __init__(self, url: str, collection: str = "journal") -> None:
        import pymongo

        client: Any = pymongo.MongoClient(url, serverSelectionTimeoutMS=3000, tz_aware=True)
        database = client.get_default_database(default="playpay")
        self.collection = database[collection]
        for fields in (
            [("kind", 1), ("occurred_at", -1)],
            [("app", 1), ("occurred_at", -1)],
            [("carrier", 1), ("occurred_at", -1)],
            *([(f"correlation.{name}", 1), ("occurred_at", -1)] for name in CORRELATION_FIELDS),
        ):
            self.collection.create_index(fields)

    def write(self, documents: Sequence[Mapping[str, Any]]) -> None:
        rows = []
        for document in documents:
            row = dict(document)
            row["occurred_at"] = datetime.fromisoformat(document["occurred_at"])
            row["app"], row["carrier"] = (
                document["correlation"].get("app", ""),
                document["correlation"].get("carrier", ""),
            )
            rows.append(row)
        if rows:
            self.collection.insert_many(rows)

    def _filter(self, query: JournalQuery) -> dict[str, Any]:
        match: dict[str, Any] = {}
        for name, value in (query.correlation or {}).items():
            if name not in CORRELATION_FIELDS:
                raise ValueError(f"{name!r} is not a correlation id")
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

    def count(self, *, by: str, query: JournalQuery) -> dict[str, int]:
        if by not in GROUPABLE:
            raise ValueError(f"counts are by one of {GROUPABLE}")
        pipeline = [{"$match": self._filter(query)}, {"$group": {"_id": f"${by}", "n": {"$sum": 1}}}]
        return {row["_id"]: row["n"] for row in self.collection.aggregate(pipeline)}


@cache
def journal_store() -> JournalStore:
    """The configured store: MongoDB for a mongodb:// JOURNAL_URL, else the SQL one."""
    if settings.JOURNAL_BACKEND == "mongodb":
        return MongoJournalStore(settings.JOURNAL_URL)
    return SqlJournalStore()
