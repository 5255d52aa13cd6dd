"""`manage.py migrate` runs under its own statement bound, not the web's 30 s."""

from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection
from django.db.models.signals import pre_migrate

pytestmark = pytest.mark.django_db


def statement_timeout() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SHOW statement_timeout")
        return str(cursor.fetchone()[0])


def test_migrate_runs_under_the_migration_bound_and_gives_the_connection_its_own_back(settings: Any) -> None:
    settings.MIGRATION_STATEMENT_TIMEOUT_MS = 5_400_000
    before = statement_timeout()
    seen: list[str] = []

    def record(**kwargs: Any) -> None:
        seen.append(statement_timeout())

    pre_migrate.connect(record, dispatch_uid="test-migrate-bound")
    try:
        call_command("migrate", verbosity=0)
    finally:
        pre_migrate.disconnect(dispatch_uid="test-migrate-bound")
    assert before == f"{settings.DATABASE_STATEMENT_TIMEOUT_MS // 1000}s"
    assert seen
    assert set(seen) == {"90min"}
    assert statement_timeout() == before
