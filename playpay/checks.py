"""Deployment checks of our own, run by `manage.py check --deploy` beside Django's."""

import sqlite3
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.db import connections


@register(Tags.security, deploy=True)
def production_is_declared(**_: Any) -> list[CheckMessage]:
    """A deployment checked for production that does not say it is one is not refused the sandbox."""
    if settings.PLAYPAY_ENV == "production":
        return []
    return [
        Warning(
            f"PLAYPAY_ENV is {settings.PLAYPAY_ENV!r}: a production deployment sets PLAYPAY_ENV=production, "
            "which refuses to start with the sandbox (fake carriers, PIN 1234) on.",
            hint="Set PLAYPAY_ENV=production on every production process (web, workers, beat).",
            id="playpay.W001",
        )
    ]


# INSERT … ON CONFLICT … RETURNING (the idempotency keys, the funnel's event ingestion) came in SQLite 3.35.
SQLITE_MINIMUM = (3, 35, 0)


def sqlite_too_old(version: tuple[int, ...]) -> CheckMessage | None:
    """The refusal of an embedded database whose SQLite lacks what PlayPay writes with, or None."""
    if version >= SQLITE_MINIMUM:
        return None
    return Error(
        f"SQLite {'.'.join(map(str, version))} is too old for PlayPay: it needs {'.'.join(map(str, SQLITE_MINIMUM))} "
        "or newer (INSERT … ON CONFLICT … RETURNING).",
        hint="Use a Python built with a newer SQLite (Python 3.11 from python.org or a current distribution), "
        "or set DATABASE_URL to a PostgreSQL database.",
        id="playpay.E001",
    )


@register(Tags.compatibility)
def embedded_database_is_recent(**_: Any) -> list[CheckMessage]:
    """Checked at every start (runserver, migrate, the scheduler) where the database is SQLite."""
    if not any(connections[alias].vendor == "sqlite" for alias in connections):
        return []
    refusal = sqlite_too_old(sqlite3.sqlite_version_info)
    return [refusal] if refusal is not None else []
