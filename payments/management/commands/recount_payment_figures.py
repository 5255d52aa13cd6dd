from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from payments.services.ledger import recount_payment_figures


def _day_start(day: date | None, *, days_after: int = 0) -> datetime | None:
    return datetime.combine(day + timedelta(days=days_after), time(), tzinfo=UTC) if day else None


class Command(BaseCommand):
    help = (
        "Set the ledger figures payments keep to what their ledger lines add up to, a month of payments per "
        "transaction, and say how many held other figures. The migration that added them ran it once; run it "
        "again after a rolling deploy in which workers of the previous release posted entries "
        "(docs/operations.md, 'Ledger figures')."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--from", dest="first", type=date.fromisoformat, help="first UTC day of payments")
        parser.add_argument("--to", dest="last", type=date.fromisoformat, help="last UTC day of payments")

    def handle(self, *args: Any, first: date | None, last: date | None, **options: Any) -> None:
        corrected = recount_payment_figures(
            created_from=_day_start(first), created_before=_day_start(last, days_after=1)
        )
        self.stdout.write(f"{corrected} payment(s) held figures other than their ledger lines' (now corrected)")
