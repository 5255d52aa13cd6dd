"""Checks run at every start: an embedded SQLite too old for what PlayPay writes is refused with the way out."""

from django.core.checks import Error

from playpay.checks import sqlite_too_old


def test_an_sqlite_without_insert_returning_is_refused_with_the_way_out() -> None:
    refusal = sqlite_too_old((3, 34, 1))
    assert isinstance(refusal, Error)
    assert refusal.id == "playpay.E001"
    assert "3.34.1" in refusal.msg
    assert "3.35.0" in refusal.msg
    assert "DATABASE_URL" in (refusal.hint or "")


def test_an_sqlite_with_insert_returning_passes() -> None:
    assert sqlite_too_old((3, 35, 0)) is None
    assert sqlite_too_old((3, 40, 1)) is None
