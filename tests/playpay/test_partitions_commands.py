"""The partition commands every partitioned table shares (PostgreSQL)."""

import io

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from playpay.partitions import add_months, month_start, registered

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]


def run(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_partitions_lists_every_partitioned_table_with_its_months() -> None:
    this_month = month_start(timezone.now())
    listed = run("partitions", "--list")
    for table in registered():
        assert f"{table.table}: created none;" in listed
    assert f".. {add_months(this_month, 3):%Y-%m})" in listed
    assert {table.table for table in registered()} >= {
        "funnel_funnelevent",
        "journal_journalrecord",
        "payments_paymentstatuschange",
        "payments_ledgerentry",
        "payments_ledgerline",
        "payments_refund",
        "payments_reversal",
    }


def test_partitions_creates_from_a_month_back_for_one_table() -> None:
    since = add_months(month_start(timezone.now()), -6)
    out = run("partitions", "--table", "funnel_funnelevent", "--since", f"{since:%Y-%m}")
    assert f"funnel_funnelevent_p{since:%Y_%m}" in out
    assert "payments_" not in out


def test_unknown_tables_and_months_are_refused() -> None:
    with pytest.raises(CommandError, match="not a partitioned table"):
        run("partitions", "--table", "payments_outboxmessage")
    with pytest.raises(CommandError, match="YYYY-MM"):
        run("partitions", "--since", "last year")
    with pytest.raises(CommandError, match="not a partitioned table"):
        run("archive_partitions", "--table", "auth_user", "--older-than-days", "30")


def test_archive_dry_run_lists_the_months_and_changes_nothing() -> None:
    since = add_months(month_start(timezone.now()), -14)
    run("partitions", "--table", "funnel_funnelevent", "--since", f"{since:%Y-%m}")
    out = run("archive_partitions", "--table", "funnel_funnelevent", "--older-than-days", "365", "--dry-run")
    assert f"would archive funnel_funnelevent_p{since:%Y_%m}" in out
    from funnel.partitions import partitions

    assert f"funnel_funnelevent_p{since:%Y_%m}" in partitions()
