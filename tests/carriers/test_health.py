"""Carrier health on the carrier pages comes from the journal's carrier calls and equals the dashboard's figures."""

import importlib
import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.utils import timezone

from carriers.adapters.base import CarrierAdapter, CarrierResult, Outcome
from carriers.errors import ErrorCode
from carriers.gateway import call_carrier
from carriers.models import Carrier
from journal.services import Kind, build
from journal.store import journal_store
from reporting.models import Dashboard, Dataset, DatasetField
from reporting.services import call_rollups
from tests.conftest import StaffClient
from tests.factories import CarrierFactory

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]

seed_module = importlib.import_module("reporting.migrations.0004_seed_catalog")

OK = CarrierResult(outcome=Outcome.SUCCEEDED)
DECLINED = CarrierResult.failed(ErrorCode.INSUFFICIENT_FUNDS, "LOW", "no credit")
TIMEOUT = CarrierResult.pending("TIMEOUT", "", transport_failed=True)


@pytest.fixture
def overview(db: Any) -> Dashboard:
    seed_module.seed_datasets(Dataset, DatasetField)
    dashboard, _ = Dashboard.objects.get_or_create(slug="overview", defaults={"title": "Overview"})
    dashboard.groups.set(Group.objects.filter(name__in=["operations", "finance"]))
    return dashboard


def answer(result: CarrierResult) -> Callable[[CarrierAdapter], CarrierResult]:
    return lambda adapter: result


def earlier_calls(carrier: Carrier, hours_ago_and_latency: list[tuple[float, int, str]]) -> None:
    """Calls journaled in earlier hours, as the gateway journals them."""
    now = timezone.now()
    documents = []
    for hours_ago, latency, outcome in hours_ago_and_latency:
        result = {"outcome": outcome, "transport_failed": outcome == "pending"}
        document = build(
            Kind.CARRIER_CALL, {"operation": "charge", "result": result, "latency_ms": latency}, carrier=carrier.slug
        )
        document["occurred_at"] = (now - timedelta(hours=hours_ago)).isoformat()
        documents.append(document)
    journal_store().write(documents)


def test_the_carrier_pages_and_the_dashboard_show_the_same_calls_and_latency(
    overview: Dashboard, journal_engines: str, staff_client: StaffClient
) -> None:
    carrier = CarrierFactory.create(slug="gb-health", name="Health Mobile")
    quiet = CarrierFactory.create(slug="gb-quiet", name="Quiet Mobile")
    for result in (OK, OK, DECLINED, TIMEOUT):
        call_carrier(carrier, answer(result), name="charge")
    earlier_calls(carrier, [(3, 140, "succeeded"), (5, 420, "failed"), (7.5, 90, "pending"), (30, 9000, "succeeded")])
    if journal_engines == "journal_url":
        call_rollups.catch_up_carrier_call_rollups()  # whole hours from the rollups, as the dashboard reads them
    operations = staff_client("operations")

    tile = operations.get("/reporting/dashboards/overview/data.json", {"period": "24h"}).json()["carriers"]
    (row,) = [row for row in tile if row["carrier"] == carrier.slug]
    assert (row["calls"], row["failed_calls"]) == (7, 2)  # the call of 30 hours ago is outside both
    assert row["avg_latency_ms"] is not None

    page = operations.get(f"/admin/carriers/carrier/{carrier.pk}/change/").content.decode()
    assert "7 calls: 5 answered (71.4 %), 2 failed in transport" in page
    assert "2 failed calls" in page
    assert f"Average latency {round(row['avg_latency_ms'])} ms, slowest {row['max_latency_ms']} ms" in page
    assert "None" not in re.sub(r"<[^>]+>", "", page.split("Last 24 hours")[1].split("</div>")[0])

    listing = operations.get("/admin/carriers/carrier/", {"q": "Mobile"}).content.decode()
    cells = re.search(r"Health Mobile.*?</tr>", listing, re.S)
    assert cells is not None
    assert re.search(r'<td class="field-calls[^"]*"[^>]*>\s*7\s*</td>', cells.group(0))
    assert f"{round(row['avg_latency_ms'])} ms" in cells.group(0)
    quiet_cells = re.search(r"Quiet Mobile.*?</tr>", listing, re.S)
    assert quiet_cells is not None
    assert re.search(r'<td class="field-calls[^"]*"[^>]*>\s*0\s*</td>', quiet_cells.group(0))
    assert quiet.slug not in [r["carrier"] for r in tile]


def test_the_carrier_page_charts_success_rate_and_latency_per_hour_and_day(
    overview: Dashboard, staff_client: StaffClient
) -> None:
    carrier = CarrierFactory.create(slug="gb-chart", name="Chart Mobile")
    earlier_calls(carrier, [(2, 100, "succeeded"), (2, 300, "pending"), (50, 80, "succeeded")])
    page = staff_client("operations").get(f"/admin/carriers/carrier/{carrier.pk}/change/").content.decode()
    hourly, daily = re.findall(r"<figure class=\"carrier-health-chart\".*?</figure>", page, re.S)
    assert "Last 48 hours, per hour (UTC) — 2 calls" in hourly
    assert "Last 14 days, per day (UTC) — 3 calls" in daily
    assert hourly.count("<rect") == 2 * 48
    assert daily.count("<rect") == 2 * 14
    assert "50.0 %, 2 calls" in hourly
    assert "200.0 ms, 2 calls" in hourly
    assert 'src="http' not in page.split("carrier-health-chart")[1]  # drawn on the server, nothing fetched
