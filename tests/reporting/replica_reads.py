"""What a report reads, run in this process or in one of its own (`python -m tests.reporting.replica_reads`,
with the settings its environment gives): the dashboard's data, a catalog query and a CSV export read in
parts, as JSON, the export's lines in a file. tests/reporting/test_read_replica.py compares both."""

import json
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any


def reports(*, now: datetime, cut: int, csv_path: Path) -> dict[str, Any]:
    """The answers of the overview dashboard (30 days to `now`), of payments and revenue per carrier and day
    over the same days, and the transactions CSV of those 30 days in two parts cut at payment id `cut`, written
    to `csv_path`."""
    from playpay.replica import reporting_alias
    from reporting.models import Dashboard, Dataset
    from reporting.selectors import DashboardFilters, dashboard_data
    from reporting.services import exports
    from reporting.services.datasets import DatasetQuery, run_query

    # The view reads which dashboard and dataset from the primary; here they come from where reports read.
    dashboard = Dashboard.objects.using(reporting_alias()).get(slug="overview")
    data = dashboard_data(dashboard=dashboard, filters=DashboardFilters(period="30d"), now=now)
    query = DatasetQuery(
        measures=("payments", "revenue_minor"),
        group_by=("carrier",),
        bucket="day",
        since=datetime.fromisoformat(data["period"]["since"]),
        until=now,
    )
    result = run_query(dataset=Dataset.objects.using(reporting_alias()).get(slug="payments"), query=query)
    parts = [exports.KeyRange(None, cut), exports.KeyRange(cut, None)]
    month = exports.ExportFilters(date_from=(now - timedelta(days=30)).date(), date_to=now.date())
    with csv_path.open("wb") as out:
        rows = exports.write_export(kind="transactions", filters=month, file_format="csv", out=out, parts=parts)
    answers = {"dashboard": data, "catalog": {"rows": result.rows, "read_from": result.read_from}, "rows": rows}
    as_json: dict[str, Any] = json.loads(json.dumps(answers, default=str))
    return as_json


if __name__ == "__main__":
    import django

    django.setup()
    arguments = json.loads(sys.argv[1])
    answered = reports(
        now=datetime.fromisoformat(arguments["now"]), cut=arguments["cut"], csv_path=Path(arguments["csv"])
    )
    print(json.dumps(answered))
