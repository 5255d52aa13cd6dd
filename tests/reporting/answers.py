"""Catalog answers from the rollups and from the rows, compared: the rollup tests' common ground."""

import pytest

from reporting.models import Dataset
from reporting.services import rollups
from reporting.services.datasets import DatasetQuery, QueryResult, run_query

ZONES = ["UTC", "Europe/Paris", "America/New_York", "Asia/Tokyo", "Asia/Kolkata"]


def answers(catalog: dict[str, Dataset], queries: list[tuple[str, DatasetQuery]]) -> list[QueryResult]:
    return [run_query(dataset=catalog[slug], query=query) for slug, query in queries]


def raw_answers(catalog: dict[str, Dataset], queries: list[tuple[str, DatasetQuery]]) -> list[QueryResult]:
    """The same queries with the rollups forgotten (then read from the rows), and the rollups rebuilt."""
    rollups.forget_payment_rollups()
    try:
        return answers(catalog, queries)
    finally:
        list(rollups.catch_up_payment_rollups())


def assert_same(rolled: list[QueryResult], raw: list[QueryResult]) -> None:
    for from_rollups, from_rows in zip(rolled, raw, strict=True):
        assert from_rollups.read_from == "rollups"
        assert from_rows.read_from == "rows"
        assert [c.name for c in from_rollups.columns] == [c.name for c in from_rows.columns]
        assert len(from_rollups.rows) == len(from_rows.rows)
        for mine, theirs in zip(from_rollups.rows, from_rows.rows, strict=True):
            assert mine.keys() == theirs.keys()
            for key, value in theirs.items():
                if isinstance(value, float):
                    assert mine[key] == pytest.approx(value, rel=1e-12)
                else:
                    assert mine[key] == value, key
