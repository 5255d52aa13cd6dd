"""The data catalog: a dataset of each source kind, queried with filters, group by and time buckets, exported."""

import csv
import importlib
import io
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone
from openpyxl import load_workbook  # type: ignore[import-untyped]

from journal.models import JournalRecord
from journal.services import Kind, record
from payments.models import PaymentStatus
from reporting.models import Dataset, DatasetField
from reporting.services import datasets as datasets_service
from reporting.services.datasets import (
    DatasetQuery,
    DatasetQueryError,
    due_api_datasets,
    fetch_api_dataset,
    run_query,
)
from sandbox.demo import seed_demo_datasets
from sandbox.simulators.core import simulator
from tests.conftest import StaffClient, assert_problem
from tests.factories import CarrierFactory
from tests.reporting.conftest import MakePayment

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]

seed_module = importlib.import_module("reporting.migrations.0004_seed_catalog")


@pytest.fixture
def catalog(db: Any) -> None:
    """The seeded datasets (a transactional test before this one may have flushed the migration's rows),
    and the sandbox's demo API datasets (FX rates, aggregator balance)."""
    seed_module.seed_datasets(Dataset, DatasetField)
    seed_demo_datasets()


def _dataset(slug: str) -> Dataset:
    return Dataset.objects.prefetch_related("fields").get(slug=slug)


def _hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def test_sql_dataset_groups_by_dimension_and_day_with_a_filter_in_the_database(
    catalog: None, make_payment: MakePayment
) -> None:
    gb, es = CarrierFactory.create(slug="gb-one"), CarrierFactory.create(slug="es-one")
    day1, day2 = datetime(2026, 3, 2, 10, tzinfo=UTC), datetime(2026, 3, 3, 23, 30, tzinfo=UTC)
    make_payment(carrier=gb, created=day1, amount_minor=100)
    make_payment(carrier=gb, created=day1 + timedelta(hours=1), amount_minor=250)
    make_payment(carrier=gb, created=day2, amount_minor=99, status=PaymentStatus.FAILED)
    make_payment(carrier=gb, created=day2, amount_minor=500, status=PaymentStatus.REFUNDED, refunded_minor=500)
    make_payment(carrier=es, created=day2, amount_minor=700)

    result = run_query(
        dataset=_dataset("payments"),
        query=DatasetQuery(
            measures=("payments", "charged_payments", "revenue_minor", "success_rate"),
            group_by=("carrier",),
            bucket="day",
            filters={"carrier": ("gb-one",)},
            since=datetime(2026, 3, 1, tzinfo=UTC),
            until=datetime(2026, 3, 10, tzinfo=UTC),
        ),
    )

    # Money is per currency, so the currency joins the group by on its own.
    assert [c.name for c in result.columns] == [
        "carrier",
        "currency",
        "bucket",
        "payments",
        "charged_payments",
        "revenue_minor",
        "success_rate",
    ]
    assert result.rows == [
        {
            "carrier": "gb-one",
            "currency": "GBP",
            "bucket": datetime(2026, 3, 2, tzinfo=UTC),
            "payments": 2,
            "charged_payments": 2,
            "revenue_minor": 350,
            "success_rate": 1.0,
        },
        {
            "carrier": "gb-one",
            "currency": "GBP",
            "bucket": datetime(2026, 3, 3, tzinfo=UTC),
            "payments": 2,
            "charged_payments": 1,
            "revenue_minor": 500,
            "success_rate": 0.5,
        },
    ]


def test_time_buckets_follow_the_requested_time_zone(catalog: None, make_payment: MakePayment) -> None:
    carrier = CarrierFactory.create()
    make_payment(carrier=carrier, created=datetime(2026, 3, 3, 23, 30, tzinfo=UTC))  # 4 March in Tokyo
    rows = run_query(
        dataset=_dataset("payments"),
        query=DatasetQuery(measures=("payments",), bucket="day", timezone="Asia/Tokyo"),
    ).rows
    assert [row["bucket"].isoformat() for row in rows] == ["2026-03-04T00:00:00+09:00"]


def test_unknown_fields_are_refused_with_the_allowed_names(catalog: None) -> None:
    payments = _dataset("payments")
    with pytest.raises(DatasetQueryError, match=r"'revenue' is not a measure .* revenue_minor"):
        run_query(dataset=payments, query=DatasetQuery(measures=("revenue",)))
    with pytest.raises(DatasetQueryError, match="'msisdn' is not a dimension"):
        run_query(dataset=payments, query=DatasetQuery(measures=("payments",), group_by=("msisdn",)))
    with pytest.raises(DatasetQueryError, match=r"'nope' is not a dimension .*filters"):
        run_query(dataset=payments, query=DatasetQuery(measures=("payments",), filters={"nope": ("x",)}))
    with pytest.raises(DatasetQueryError, match="Time buckets are"):
        run_query(dataset=payments, query=DatasetQuery(measures=("payments",), bucket="minute"))


def test_a_field_must_exist_in_its_registered_source(catalog: None) -> None:
    payments = Dataset.objects.get(slug="payments")
    bad = DatasetField(dataset=payments, name="pin", role="dimension", source="pin_attempts_raw")
    with pytest.raises(ValidationError, match="not a field of payments"):
        bad.full_clean()
    unknown_source = Dataset(slug="x", name="x", source_kind="sql", source="auth_user")
    with pytest.raises(ValidationError, match="registered sql sources"):
        unknown_source.full_clean()


def test_journal_dataset_aggregates_carrier_call_latency_and_failures_in_the_store(
    catalog: None, journal_engines: str
) -> None:
    calls = [("gb-one", "succeeded", None, 120), ("gb-one", "failed", "insufficient_funds", 80)]
    calls += [("gb-one", "succeeded", None, 200), ("es-one", "failed", "unavailable", 1000)]
    for carrier, outcome, code, latency in calls:
        record(
            Kind.CARRIER_CALL,
            {"operation": "charge", "result": {"outcome": outcome, "error_code": code}, "latency_ms": latency},
            carrier=carrier,
        )
    record(Kind.API_REQUEST, {"latency_ms": 5000}, carrier="gb-one")  # another kind: not a carrier call

    result = run_query(
        dataset=_dataset("carrier-calls"),
        query=DatasetQuery(
            measures=("calls", "failed_calls", "avg_latency_ms", "max_latency_ms"),
            group_by=("carrier",),
            bucket="hour",
            filters={"operation": ("charge",)},
            since=timezone.now() - timedelta(hours=1),
        ),
    )

    hour = _hour(JournalRecord.objects.order_by("occurred_at").first().occurred_at)  # type: ignore[union-attr]
    assert result.rows == [
        {
            "carrier": "es-one",
            "bucket": hour,
            "calls": 1,
            "failed_calls": 1,
            "avg_latency_ms": 1000.0,
            "max_latency_ms": 1000,
        },
        {
            "carrier": "gb-one",
            "bucket": hour,
            "calls": 3,
            "failed_calls": 1,
            "avg_latency_ms": 400 / 3,
            "max_latency_ms": 200,
        },
    ]
    by_code = run_query(
        dataset=_dataset("carrier-calls"),
        query=DatasetQuery(measures=("calls",), group_by=("error_code",), filters={"outcome": ("failed",)}),
    ).rows
    assert by_code == [{"error_code": "insufficient_funds", "calls": 1}, {"error_code": "unavailable", "calls": 1}]


def test_a_journal_dataset_query_with_a_filter_answers_json(
    catalog: None, journal_engines: str, staff_client: StaffClient
) -> None:
    for carrier, operation in (("gb-one", "charge"), ("gb-one", "charge"), ("gb-one", "refund"), ("es-one", "charge")):
        record(Kind.CARRIER_CALL, {"operation": operation, "result": {"outcome": "succeeded"}}, carrier=carrier)

    response = staff_client("finance").get(
        "/reporting/datasets/carrier-calls/query.json?measures=calls&group_by=carrier&f.operation=charge"
    )

    assert response.status_code == 200, response.content
    assert response.json()["rows"] == [{"carrier": "es-one", "calls": 1}, {"carrier": "gb-one", "calls": 2}]


def _api_payload() -> dict[str, Any]:
    return {
        "rates": [
            {"date": "2026-03-02", "base": "EUR", "quote": "GBP", "rate": "0.80"},
            {"date": "2026-03-03", "base": "EUR", "quote": "GBP", "rate": "0.90"},
            {"date": "2026-03-03", "base": "EUR", "quote": "JPY", "rate": "160"},
        ]
    }


def test_api_dataset_queries_its_cached_payload(catalog: None) -> None:
    Dataset.objects.filter(slug="fx-rates").update(api_payload=_api_payload())
    rows = run_query(
        dataset=_dataset("fx-rates"),
        query=DatasetQuery(measures=("rate",), group_by=("quote",), bucket="week", filters={"quote": ("GBP",)}),
    ).rows
    assert rows == [{"quote": "GBP", "bucket": datetime(2026, 3, 2, tzinfo=UTC), "rate": pytest.approx(0.85)}]


@pytest.mark.parametrize(
    ("slug", "query_string", "header", "on_sqlite"),
    [
        (
            "payments",
            "measures=payments,revenue_minor&group_by=carrier&bucket=day",
            "carrier,currency,bucket (UTC),payments,revenue_minor",
            False,
        ),
        ("carrier-calls", "measures=calls&group_by=carrier&f.operation=charge", "carrier,calls", False),
        ("carrier-calls", "measures=calls&group_by=carrier&f.operation=charge", "carrier,calls", True),
        ("fx-rates", "measures=rate&group_by=quote&bucket=day", "quote,bucket (UTC),rate", False),
    ],
)
def test_every_kind_of_dataset_exports_its_query_to_csv_and_xlsx(
    catalog: None,
    make_payment: MakePayment,
    slug: str,
    query_string: str,
    header: str,
    on_sqlite: bool,
    staff_client: StaffClient,
    request: pytest.FixtureRequest,
) -> None:
    if on_sqlite:  # the embedded default's journal
        request.getfixturevalue("journal_on_sqlite")
    make_payment(carrier=CarrierFactory.create(slug="gb-one"), created=datetime(2026, 3, 2, 10, tzinfo=UTC))
    record(
        Kind.CARRIER_CALL,
        {"operation": "charge", "result": {"outcome": "succeeded"}, "latency_ms": 7},
        carrier="gb-one",
    )
    Dataset.objects.filter(slug="fx-rates").update(api_payload=_api_payload())
    client = staff_client("finance")

    response = client.get(f"/reporting/datasets/{slug}/export.csv?{query_string}")
    assert response.status_code == 200
    lines = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))  # type: ignore[attr-defined]
    assert ",".join(lines[0]) == header
    assert len(lines) > 1

    response = client.get(f"/reporting/datasets/{slug}/export.xlsx?{query_string}")
    assert response.status_code == 200
    sheet = load_workbook(io.BytesIO(b"".join(response.streaming_content))).active  # type: ignore[attr-defined]
    rows = list(sheet.iter_rows(values_only=True))
    assert [str(cell) for cell in rows[0]] == header.split(",")
    assert rows[1:] == [tuple(None if cell == "" else _cell(cell) for cell in line) for line in lines[1:]]


def _cell(text: str) -> Any:
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return text


def test_a_query_with_an_unknown_field_is_a_problem_and_exports_nothing(
    catalog: None, staff_client: StaffClient
) -> None:
    client = staff_client("finance")
    response = client.get("/reporting/datasets/payments/query.json?measures=secret_sauce")
    assert "secret_sauce" in assert_problem(response, status=400, code="invalid_dataset_query")["detail"]
    export = client.get("/reporting/datasets/payments/export.csv?measures=secret_sauce")
    assert "secret_sauce" in assert_problem(export, status=400, code="invalid_dataset_query")["detail"]


def test_the_admin_query_page_shows_the_table_and_export_links(
    catalog: None, make_payment: MakePayment, staff_client: StaffClient
) -> None:
    make_payment(carrier=CarrierFactory.create(slug="gb-one"), created=timezone.now())
    client = staff_client("finance")
    dataset = Dataset.objects.get(slug="payments")
    response = client.get(f"/admin/reporting/dataset/{dataset.pk}/query/?measures=payments&group_by=carrier")
    assert response.status_code == 200
    page = response.content.decode()
    assert 'id="query-result"' in page
    assert "gb-one" in page
    assert "/reporting/datasets/payments/export.xlsx?measures=payments&amp;group_by=carrier" in page


def test_api_dataset_is_fetched_from_the_simulator_and_cached(simulator_server: str, catalog: None) -> None:
    Dataset.objects.filter(slug="fx-rates").update(api_url=f"{simulator_server}/simulators/fx/rates")
    dataset = fetch_api_dataset(dataset_id=Dataset.objects.get(slug="fx-rates").pk)
    assert dataset.api_last_error == ""
    assert dataset.api_fetched_at is not None
    rows = run_query(dataset=_dataset("fx-rates"), query=DatasetQuery(measures=("rate",), group_by=("quote",))).rows
    assert {"quote": "GBP", "rate": 0.85} in rows


def test_a_slow_api_times_out_keeps_the_last_payload_and_shows_the_error(
    simulator_server: str, catalog: None, staff_client: StaffClient
) -> None:
    Dataset.objects.filter(slug="fx-rates").update(
        api_url=f"{simulator_server}/simulators/fx/rates", api_timeout_seconds=1
    )
    pk = Dataset.objects.get(slug="fx-rates").pk
    good = fetch_api_dataset(dataset_id=pk)
    simulator("fx").configure(latency_ms=2500)

    slow = fetch_api_dataset(dataset_id=pk)

    assert slow.api_last_error == "timed out after 1 s"
    assert slow.api_fetched_at == good.api_fetched_at
    assert slow.api_payload == good.api_payload
    assert slow.api_attempted_at is not None
    assert good.api_fetched_at is not None
    assert slow.api_attempted_at > good.api_fetched_at
    simulator("fx").configure(latency_ms=0, outage=True)
    assert fetch_api_dataset(dataset_id=pk).api_last_error == "HTTP 503 from the endpoint"
    admin = staff_client("superuser")
    page = admin.get(f"/admin/reporting/dataset/{pk}/change/").content.decode()
    assert "HTTP 503 from the endpoint" in page


def test_a_failed_fetch_is_tried_again_within_a_minute_a_good_one_after_its_interval(catalog: None) -> None:
    dataset = _dataset("fx-rates")
    now = timezone.now()
    assert dataset.api_refresh_minutes > 1
    Dataset.objects.filter(pk=dataset.pk).update(api_attempted_at=now - timedelta(seconds=61), api_last_error="")
    assert dataset.pk not in due_api_datasets(now=now)
    Dataset.objects.filter(pk=dataset.pk).update(api_last_error="could not connect")
    assert dataset.pk in due_api_datasets(now=now)
    Dataset.objects.filter(pk=dataset.pk).update(api_attempted_at=now - timedelta(seconds=30))
    assert dataset.pk not in due_api_datasets(now=now)
    Dataset.objects.filter(pk=dataset.pk).update(
        api_attempted_at=now - timedelta(minutes=dataset.api_refresh_minutes), api_last_error=""
    )
    assert dataset.pk in due_api_datasets(now=now)


def test_a_reply_larger_than_the_limit_is_refused_and_the_last_payload_kept(
    simulator_server: str, catalog: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    Dataset.objects.filter(slug="fx-rates").update(api_url=f"{simulator_server}/simulators/fx/rates")
    pk = Dataset.objects.get(slug="fx-rates").pk
    good = fetch_api_dataset(dataset_id=pk)
    assert good.api_last_error == ""
    monkeypatch.setattr(datasets_service, "MAX_API_BYTES", 64)

    big = fetch_api_dataset(dataset_id=pk)

    assert big.api_last_error == "the reply is larger than 64 bytes"
    assert big.api_payload == good.api_payload
