"""One query interface over every dataset of the catalog, whatever its source.

A query names measures, optional group-by dimensions, an optional time bucket, filters
(dimension -> allowed values) and a period. SQL and journal datasets are aggregated by their
store (GROUP BY in PostgreSQL, an aggregation pipeline in MongoDB); API datasets are a small
cached payload (at most `MAX_API_ROWS` rows), grouped in Python since the remote API cannot
aggregate for us.
"""

import json
import logging
import re
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import IO, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx
from django.db.models import Avg, Count, Max, Min, Sum
from django.db.models.functions import Trunc
from django.utils import timezone

from funnel.models import FunnelDefinition
from funnel.rollups import DIMENSIONS, day_levels
from journal.store import JournalAggregate, journal_store
from playpay.errors import DomainError
from playpay.replica import reading_reports
from playpay.tables import csv_lines, temporary_file, write_table
from reporting.catalog import JOURNAL_SOURCES, SQL_SOURCES
from reporting.models import Dataset, DatasetField, SourceKind, TimeBucket
from reporting.services import call_rollups, rollups, subscriber_counts
from reporting.services.rollups import truncate_to_bucket
from tenants.models import App

logger = logging.getLogger(__name__)

# An API payload bigger than this is refused at fetch time: such data belongs in a SQL source.
MAX_API_ROWS = 5000
MAX_API_BYTES = 2_000_000


class DatasetQueryError(DomainError):
    """A query the dataset cannot answer; the message says what is allowed instead."""

    code = "invalid_dataset_query"
    title = "The dataset cannot answer this query"
    http_status = 400


@dataclass(frozen=True)
class DatasetQuery:
    measures: tuple[str, ...]
    group_by: tuple[str, ...] = ()
    bucket: str | None = None
    filters: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    since: datetime | None = None
    until: datetime | None = None
    timezone: str = "UTC"


@dataclass(frozen=True)
class Column:
    name: str
    label: str
    role: str  # dimension, measure or bucket
    data_type: str
    unit: str = ""


@dataclass(frozen=True)
class QueryResult:
    columns: list[Column]
    rows: list[dict[str, Any]]
    # "rollups": whole hours from the payment or carrier-call rollups, the rest from rows, or the subscriber counts;
    # "rows": from the rows only.
    read_from: str = "rows"

    def as_json(self) -> dict[str, Any]:
        return {
            "read_from": self.read_from,
            "columns": [column.__dict__ for column in self.columns],
            "rows": [{key: _json_value(value) for key, value in row.items()} for row in self.rows],
        }


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    return value


# A measure every dataset has: the number of rows (never a field's name: slugs have no "#").
ROWS = "#rows"


def _fields(dataset: Dataset) -> dict[str, DatasetField]:
    fields = {f.name: f for f in dataset.fields.all()}
    fields[ROWS] = DatasetField(name=ROWS, label="rows", role="measure", aggregation="count", data_type="integer")
    return fields


def _pick(fields: dict[str, DatasetField], names: Sequence[str], role: str, what: str) -> list[DatasetField]:
    allowed = [name for name, f in fields.items() if f.role == role and name != ROWS]
    picked = []
    for name in names:
        if name not in allowed and not (name == ROWS and role == DatasetField.Role.MEASURE):
            raise DatasetQueryError(
                f"{name!r} is not a {role} of this dataset ({what}); its {role}s are: {', '.join(allowed) or 'none'}."
            )
        picked.append(fields[name])
    return picked


@dataclass(frozen=True)
class _Plan:
    measures: list[DatasetField]
    group_by: list[DatasetField]
    filters: list[tuple[DatasetField, tuple[str, ...]]]
    bucket: str | None
    zone: ZoneInfo


def _plan(dataset: Dataset, query: DatasetQuery) -> _Plan:
    fields = _fields(dataset)
    if not query.measures:
        raise DatasetQueryError("Name at least one measure.")
    measures = _pick(fields, query.measures, DatasetField.Role.MEASURE, "measures")
    group_names = list(dict.fromkeys(query.group_by))
    # Minor units of different currencies never add up: money is always per currency.
    if any(m.data_type == DatasetField.DataType.MONEY for m in measures) and "currency" not in group_names:
        if "currency" not in fields:
            raise DatasetQueryError("This dataset has money measures but no currency dimension to group them by.")
        group_names.append("currency")
    group_by = _pick(fields, group_names, DatasetField.Role.DIMENSION, "group by")
    filters = [
        (f, tuple(str(v) for v in values))
        for f, values in zip(
            _pick(fields, list(query.filters), DatasetField.Role.DIMENSION, "filters"),
            query.filters.values(),
            strict=True,
        )
    ]
    if query.bucket and query.bucket not in TimeBucket.values:
        raise DatasetQueryError(f"Time buckets are: {', '.join(TimeBucket.values)}.")
    if (query.bucket or query.since or query.until) and not dataset.time_field:
        raise DatasetQueryError("This dataset has no time field: no period or time bucket.")
    if query.since and query.until and query.since >= query.until:
        raise DatasetQueryError("The period ends before it starts.")
    try:
        zone = ZoneInfo(query.timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise DatasetQueryError(f"{query.timezone!r} is not a time zone.") from exc
    return _Plan(measures, group_by, filters, query.bucket or None, zone)


def _columns(plan: _Plan) -> list[Column]:
    columns = [Column(f.name, f.label or f.name, "dimension", f.data_type, f.unit) for f in plan.group_by]
    if plan.bucket:
        columns.append(Column("bucket", plan.bucket, "bucket", "datetime", plan.zone.key))
    columns += [Column(f.name, f.label or f.name, "measure", f.data_type, f.unit) for f in plan.measures]
    return columns


def _normalize(plan: _Plan, row: dict[str, Any]) -> dict[str, Any]:
    for measure in plan.measures:
        value = row.get(measure.name)
        integral = measure.data_type in (DatasetField.DataType.INTEGER, DatasetField.DataType.MONEY)
        if value is None:
            if measure.aggregation in ("count", "count_distinct", "sum"):
                row[measure.name] = 0
        elif measure.aggregation in ("count", "count_distinct") or (integral and measure.aggregation != "avg"):
            row[measure.name] = int(value)
        else:
            row[measure.name] = float(value)
    if plan.bucket and isinstance(row.get("bucket"), datetime):
        row["bucket"] = row["bucket"].astimezone(plan.zone)
    return row


def run_query(*, dataset: Dataset, query: DatasetQuery) -> QueryResult:
    """Answer a query; raises DatasetQueryError, with what is allowed, for anything the dataset lacks. It reads
    where reports read (playpay.replica), the dataset's fields included."""
    with reading_reports():
        return _run_query(dataset=dataset, query=query)


def _run_query(*, dataset: Dataset, query: DatasetQuery) -> QueryResult:
    plan = _plan(dataset, query)
    read_from = "rows"
    if dataset.source_kind == SourceKind.SQL:
        with rollups.reporting_statement():
            rollup_query = _rollup_query(dataset, query, plan)
            rows = rollups.rollup_rows(rollup_query)
            if rows is None:
                rows = subscriber_counts.rollup_rows(rollup_query)
            if rows is None:
                rows = _funnel_day_rows(dataset, query, plan)
            if rows is None:
                rows = _sql_rows(dataset, query, plan)
            else:
                read_from = "rollups"
    elif dataset.source_kind == SourceKind.JOURNAL:
        rows = _call_rollup_rows(dataset, query, plan)
        if rows is None:
            rows = _journal_rows(dataset, query, plan)
        else:
            read_from = "rollups"
    else:
        rows = _api_rows(dataset, query, plan)
    return _result(plan, rows, read_from)


def _result(plan: _Plan, rows: list[dict[str, Any]], read_from: str) -> QueryResult:
    ordered = [_normalize(plan, row) for row in rows]
    columns = _columns(plan)
    names = [column.name for column in columns]
    return QueryResult(columns, [{name: row.get(name) for name in names} for row in ordered], read_from)


def run_queries(*, dataset: Dataset, queries: list[DatasetQuery]) -> list[QueryResult]:
    """The answers of `run_query` to several queries of one dataset; from one read of the payment rollups when
    they can answer them together (one period, zone and filters), else one query after the other."""
    with reading_reports():
        plans = [_plan(dataset, query) for query in queries]
    if dataset.source_kind == SourceKind.SQL and len(queries) > 1:
        with rollups.reporting_statement():
            together = rollups.rollup_rows_together(
                [_rollup_query(dataset, query, plan) for query, plan in zip(queries, plans, strict=True)]
            )
        if together is not None:
            return [_result(plan, rows, "rollups") for plan, rows in zip(plans, together, strict=True)]
    return [run_query(dataset=dataset, query=query) for query in queries]


# --- SQL ---------------------------------------------------------------------------------------

_SQL_AGGREGATES = {"sum": Sum, "avg": Avg, "min": Min, "max": Max}


def _rollup_query(dataset: Dataset, query: DatasetQuery, plan: _Plan) -> rollups.RollupQuery:
    source = SQL_SOURCES.get(dataset.source)
    return rollups.RollupQuery(
        source=dataset.source,
        time_field=source.time_fields.get(dataset.time_field, "") if source else dataset.time_field,
        group_by=tuple((f.name, f.source_name) for f in plan.group_by),
        filters=tuple((f.source_name, values) for f, values in plan.filters),
        measures=tuple((m.name, m.aggregation, m.source_name) for m in plan.measures),
        bucket=plan.bucket,
        zone=plan.zone,
        since=query.since,
        until=query.until,
    )


def _sql_rows(dataset: Dataset, query: DatasetQuery, plan: _Plan) -> list[dict[str, Any]]:
    source = SQL_SOURCES[dataset.source]
    queryset = source.queryset()
    time_lookup = source.time_fields[dataset.time_field] if dataset.time_field else ""
    if query.since:
        queryset = queryset.filter(**{f"{time_lookup}__gte": query.since})
    if query.until:
        queryset = queryset.filter(**{f"{time_lookup}__lt": query.until})
    for index, (dimension, values) in enumerate(plan.filters):
        alias = f"flt{index}"
        queryset = queryset.alias(**{alias: source.fields[dimension.source_name]()}).filter(
            **{f"{alias}__in": list(values)}
        )
    # Positional aliases: an annotation may not reuse a model field's name (payments have a `carrier`),
    # and "#rows" is no SQL alias.
    names: dict[str, str] = {}
    group: dict[str, Any] = {}
    for index, dimension in enumerate(plan.group_by):
        names[f"g{index}"] = dimension.name
        group[f"g{index}"] = source.fields[dimension.source_name]()
    if plan.bucket:
        names["t_bucket"] = "bucket"
        group["t_bucket"] = Trunc(time_lookup, plan.bucket, tzinfo=plan.zone)
    measures: dict[str, Any] = {}
    for index, measure in enumerate(plan.measures):
        alias = f"m{index}"
        names[alias] = measure.name
        if not measure.source_name:
            measures[alias] = Count("pk")
            continue
        expression = source.fields[measure.source_name]()
        if measure.aggregation in ("count", "count_distinct"):
            measures[alias] = Count(expression, distinct=measure.aggregation == "count_distinct")
        else:
            measures[alias] = _SQL_AGGREGATES[measure.aggregation](expression)
    if group:
        rows = list(queryset.order_by().annotate(**group).values(*group).annotate(**measures).order_by(*group))
    else:
        rows = [queryset.aggregate(**measures)]
    return [{names[key]: value for key, value in row.items()} for row in rows]


# The funnel rollups' day rows add up their cells per value of each of their dimensions, named here without `_id`.
_FUNNEL_DAY_COLUMNS = {column.removesuffix("_id"): column for column in DIMENSIONS}
_FUNNEL_STEP = re.compile(r"step_(\d+)")


def _funnel_day_rows(dataset: Dataset, query: DatasetQuery, plan: _Plan) -> list[dict[str, Any]] | None:
    """Steps reached in a period of funnels, under at most one breakdown filter, from the funnel rollups' day rows
    for the whole UTC days and the hourly cells for the hours at the edges (a long period reads one row per day
    instead of every hour's cells); None when the query is not of that shape."""
    if dataset.source != "funnel_rollups" or plan.group_by or plan.bucket or not (query.since and query.until):
        return None
    steps = [_FUNNEL_STEP.fullmatch(m.source_name) for m in plan.measures]
    if any(match is None or m.aggregation != "sum" for match, m in zip(steps, plan.measures, strict=True)):
        return None
    filters = {f.source_name: values for f, values in plan.filters}
    names = filters.pop("funnel", None)
    if names is None or len(filters) > 1 or any(name not in _FUNNEL_DAY_COLUMNS for name in filters):
        return None
    column, values = next(iter(filters.items()), ("app", None))
    if column == "app" and values is not None:
        values = tuple(str(pk) for pk in App.objects.filter(name__in=values).values_list("pk", flat=True))
    funnel_ids = list(FunnelDefinition.objects.filter(name__in=names).values_list("pk", flat=True))
    levels = max(int(match.group(1)) for match in steps if match)
    days, (first, end) = day_levels(
        funnel_ids=funnel_ids,
        since=query.since,
        until=query.until,
        column=_FUNNEL_DAY_COLUMNS[column],
        values=list(values) if values is not None else None,
        levels=levels,
    )
    if first >= end:
        return None
    row: dict[str, Any] = {
        m.name: days[int(match.group(1)) - 1] for m, match in zip(plan.measures, steps, strict=True) if match
    }
    for since, until in ((query.since, first), (end, query.until)):
        if since < until:
            (edge,) = _sql_rows(dataset, replace(query, since=since, until=until), plan)
            for name, value in edge.items():
                if value is not None:
                    row[name] = (row[name] or 0) + value
    return [row]


# --- Journal -----------------------------------------------------------------------------------


def _call_rollup_rows(dataset: Dataset, query: DatasetQuery, plan: _Plan) -> list[dict[str, Any]] | None:
    """The carrier-calls rows from the carrier-call rollups, or None when they cannot answer."""
    with rollups.reporting_statement():
        return call_rollups.rollup_rows(_rollup_query(dataset, query, plan))


def _journal_rows(dataset: Dataset, query: DatasetQuery, plan: _Plan) -> list[dict[str, Any]]:
    source = JOURNAL_SOURCES[dataset.source]
    spec = JournalAggregate(
        kind=source.kind,
        since=query.since,
        until=query.until,
        filters={f.name: (source.fields[f.source_name], values) for f, values in plan.filters},
        group={f.name: source.fields[f.source_name] for f in plan.group_by},
        bucket=plan.bucket,
        timezone=plan.zone.key,
        measures={
            m.name: (m.aggregation, source.fields[m.source_name] if m.source_name else None) for m in plan.measures
        },
    )
    return journal_store().aggregate(spec)


# --- API ---------------------------------------------------------------------------------------


def api_rows(dataset: Dataset) -> list[dict[str, Any]]:
    """The rows of the cached payload (the list at `api_rows_path`)."""
    payload: Any = dataset.api_payload
    if payload is None:
        return []
    for part in [p for p in dataset.api_rows_path.split(".") if p]:
        payload = payload.get(part) if isinstance(payload, dict) else None
    return [row for row in payload if isinstance(row, dict)] if isinstance(payload, list) else []


def _row_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _number(value: Any) -> Decimal | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return Decimal(str(value))
    except ArithmeticError:
        return None


def _api_rows(dataset: Dataset, query: DatasetQuery, plan: _Plan) -> list[dict[str, Any]]:
    """The query over an API dataset's cached rows, answered in Python: select, group, aggregate."""
    groups = _api_groups(dataset, query, plan)
    if not plan.group_by and not plan.bucket and not groups:
        groups[()] = []  # a total over no rows is still one row
    return [_aggregate_group(key, groups[key], plan) for key in sorted(groups, key=_group_order)]


def _api_groups(dataset: Dataset, query: DatasetQuery, plan: _Plan) -> dict[tuple[Any, ...], list[dict[str, Any]]]:
    """The cached rows that the query selects, by their group (and time bucket)."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for row in api_rows(dataset):
        moment = _row_time(row.get(dataset.time_field)) if dataset.time_field else None
        if not _in_period(moment, query, plan) or not _passes_filters(row, plan):
            continue
        key = tuple(row.get(f.source_name) for f in plan.group_by)
        if plan.bucket and moment:
            key += (truncate_to_bucket(moment, plan.bucket, plan.zone),)
        groups[key].append(row)
    return groups


def _in_period(moment: datetime | None, query: DatasetQuery, plan: _Plan) -> bool:
    """Whether a row of this time (None: it has none) is in the period; a timeless row only when none is asked."""
    if moment is None:
        return not (query.since or query.until or plan.bucket)
    return not ((query.since and moment < query.since) or (query.until and moment >= query.until))


def _passes_filters(row: dict[str, Any], plan: _Plan) -> bool:
    return all(str(row.get(f.source_name, "")) in values for f, values in plan.filters)


def _group_order(key: tuple[Any, ...]) -> tuple[str, ...]:
    return tuple("" if value is None else str(value) for value in key)


def _aggregate_group(key: tuple[Any, ...], members: list[dict[str, Any]], plan: _Plan) -> dict[str, Any]:
    out: dict[str, Any] = {f.name: value for f, value in zip(plan.group_by, key, strict=False)}
    if plan.bucket:
        out["bucket"] = key[-1]
    for measure in plan.measures:
        out[measure.name] = _aggregate_python(measure, members)
    return out


def _aggregate_python(measure: DatasetField, rows: list[dict[str, Any]]) -> Any:
    if not measure.source_name:
        return len(rows)
    present = [row.get(measure.source_name) for row in rows if row.get(measure.source_name) is not None]
    if measure.aggregation == "count":
        return len(present)
    if measure.aggregation == "count_distinct":
        return len({str(value) for value in present})
    numbers = [n for n in (_number(value) for value in present) if n is not None]
    if not numbers:
        return None
    if measure.aggregation == "sum":
        return sum(numbers, Decimal(0))
    if measure.aggregation == "avg":
        return sum(numbers, Decimal(0)) / len(numbers)
    return min(numbers) if measure.aggregation == "min" else max(numbers)


class ApiFetchError(Exception):
    pass


def fetch_api_dataset(*, dataset_id: int) -> Dataset:
    """Fetch an API dataset's endpoint now and cache the payload; on failure keep the last one and record why.

    The HTTP call happens outside any transaction; its timeout is the dataset's.
    """
    dataset = Dataset.objects.get(pk=dataset_id, source_kind=SourceKind.API)
    attempted = timezone.now()
    try:
        payload = _download(dataset)
    except ApiFetchError as error:
        logger.warning("API dataset %s: fetch failed: %s", dataset.slug, error)
        Dataset.objects.filter(pk=dataset.pk).update(api_attempted_at=attempted, api_last_error=str(error)[:500])
    else:
        Dataset.objects.filter(pk=dataset.pk).update(
            api_attempted_at=attempted, api_fetched_at=timezone.now(), api_payload=payload, api_last_error=""
        )
    dataset.refresh_from_db()
    return dataset


def _download(dataset: Dataset) -> Any:
    timeout = httpx.Timeout(float(dataset.api_timeout_seconds))
    try:
        with (
            httpx.Client(timeout=timeout, follow_redirects=False) as client,
            client.stream("GET", dataset.api_url, headers={"Accept": "application/json"}) as response,
        ):
            if response.status_code != 200:
                raise ApiFetchError(f"HTTP {response.status_code} from the endpoint")
            # Read no more than MAX_API_BYTES of a reply, whatever it claims to be.
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_API_BYTES:
                    raise ApiFetchError(f"the reply is larger than {MAX_API_BYTES} bytes")
    except httpx.TimeoutException as exc:
        raise ApiFetchError(f"timed out after {dataset.api_timeout_seconds} s") from exc
    except httpx.HTTPError as exc:
        raise ApiFetchError(f"could not connect: {type(exc).__name__}") from exc
    try:
        payload = json.loads(body)
    except ValueError as exc:
        raise ApiFetchError("the reply is not JSON") from exc
    probe = Dataset(api_payload=payload, api_rows_path=dataset.api_rows_path)
    rows = api_rows(probe)
    if not rows:
        raise ApiFetchError(f"no list of rows at {dataset.api_rows_path or 'the top level'!r} in the reply")
    if len(rows) > MAX_API_ROWS:
        raise ApiFetchError(f"{len(rows)} rows are more than {MAX_API_ROWS}")
    return payload


# A failed fetch is tried again this soon, however long the dataset's refresh interval.
RETRY_AFTER_ERROR = timedelta(minutes=1)


def due_api_datasets(*, now: datetime) -> list[int]:
    """API datasets whose last attempt is older than their refresh interval (or never made).

    After a failed attempt the dataset is due again after RETRY_AFTER_ERROR, if that is sooner.
    """
    due = []
    for dataset in Dataset.objects.filter(source_kind=SourceKind.API).only(
        "pk", "api_attempted_at", "api_refresh_minutes", "api_last_error"
    ):
        last = dataset.api_attempted_at
        interval = timedelta(minutes=dataset.api_refresh_minutes)
        if dataset.api_last_error:
            interval = min(interval, RETRY_AFTER_ERROR)
        if last is None or now - last >= interval:
            due.append(dataset.pk)
    return due


# --- Export ------------------------------------------------------------------------------------


def _header(result: QueryResult) -> list[str]:
    return [f"{c.name} ({c.unit})" if c.unit else c.name for c in result.columns]


def _cells(result: QueryResult) -> Iterator[list[Any]]:
    for row in result.rows:
        cells = []
        for column in result.columns:
            value = row[column.name]
            if isinstance(value, datetime):
                value = value.replace(tzinfo=None)  # spreadsheets have no time zones; the header says which
            cells.append(value)
        yield cells


def export_query_csv(*, dataset: Dataset, query: DatasetQuery) -> Iterator[str]:
    result = run_query(dataset=dataset, query=query)
    return csv_lines(_header(result), _cells(result))


def export_query_file(*, dataset: Dataset, query: DatasetQuery, file_format: str) -> IO[bytes]:
    result = run_query(dataset=dataset, query=query)

    return temporary_file(
        lambda out: write_table(out, _header(result), _cells(result), file_format=file_format, title=dataset.slug)
    )


def query_file_name(*, dataset: Dataset, file_format: str) -> str:
    return f"playpay_{dataset.slug}_{timezone.now():%Y%m%d-%H%M}.{file_format}"
