"""The catalog's funnel-rollups dataset reads whole UTC days from the funnel rollups' day rows and the hours at
the edges from the cells, with the same answer as the cells alone."""

import importlib
from datetime import timedelta
from typing import Any

import pytest

from funnel.models import FunnelDefinition, Journey
from funnel.rollups import refresh_rollups
from reporting.models import Dataset, DatasetField
from reporting.services.datasets import DatasetQuery, run_query
from tests.factories import AppFactory
from tests.funnel.test_analysis import STEPS
from tests.funnel.test_rollup_days import DAY0, journeys_over_days

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]

seed_module = importlib.import_module("reporting.migrations.0004_seed_catalog")
MEASURES = ("step_1", "step_2", "step_3", "step_4")  # the funnel has three steps: step_4 is none


@pytest.fixture
def funnel_rollups(db: Any) -> Dataset:
    seed_module.seed_datasets(Dataset, DatasetField)
    return Dataset.objects.prefetch_related("fields").get(slug="funnel-rollups")


def from_cells(dataset: Dataset, query: DatasetQuery) -> dict[str, int]:
    """The query's steps added up from hourly buckets: a bucketed query is read from the cells alone."""
    rows = run_query(dataset=dataset, query=DatasetQuery(**{**query.__dict__, "bucket": "hour"})).rows
    return {name: sum(row[name] for row in rows) for name in query.measures}


def test_steps_reached_over_days_equal_the_cells_whatever_the_edges_and_filter(funnel_rollups: Dataset) -> None:
    app, other = AppFactory.create(name="game"), AppFactory.create(name="other")
    journeys_over_days(app, seed=1, days=4, count=300)
    Journey.objects.filter(journey_id__endswith="7").update(app=other)  # a second app (its events stay the first's)
    shop = FunnelDefinition.objects.create(name="shop", steps=STEPS, window_seconds=3600)
    refresh_rollups(funnel=shop, since=DAY0, until=DAY0 + timedelta(days=5))
    checked = 0
    for since_hours, until_hours in ((0, 96), (5, 77), (13.5, 50.25), (30, 100), (2, 20)):
        since, until = DAY0 + timedelta(hours=since_hours), DAY0 + timedelta(hours=until_hours)
        for extra in ({}, {"carrier": ("c1",)}, {"carrier": ("",)}, {"app": ("game",)}, {"app": ("other", "game")}):
            query = DatasetQuery(measures=MEASURES, filters={"funnel": ("shop",), **extra}, since=since, until=until)
            result = run_query(dataset=funnel_rollups, query=query)
            assert result.rows == [from_cells(funnel_rollups, query)]
            checked += result.rows[0]["step_1"]
    assert checked > 0
    whole_days = DatasetQuery(measures=MEASURES, filters={"funnel": ("shop",)}, since=DAY0, until=DAY0 + timedelta(4))
    assert run_query(dataset=funnel_rollups, query=whole_days).rows[0]["step_4"] == 0  # not the exclusions
