from argparse import ArgumentParser
from datetime import date
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from playpay.partitions import get, registered


def parse_month(value: str, option: str) -> date:
    try:
        year, month = (int(part) for part in value.split("-"))
        return date(year, month, 1)
    except ValueError as exc:
        raise CommandError(f"{option} is YYYY-MM") from exc


class Command(BaseCommand):
    help = (
        "List the monthly partitions of every partitioned table (PostgreSQL), creating what the periodic job "
        "would: this month, the next ones, those a default partition has rows for, and with --since every "
        "month from then on (to load older rows)."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--table", help="only this table")
        parser.add_argument("--since", help="first month to have a partition, YYYY-MM")
        parser.add_argument("--ahead", type=int, help="months ahead (each table's own by default)")
        parser.add_argument("--list", action="store_true", help="list only, create nothing")

    def handle(self, *args: Any, **options: Any) -> None:
        since = parse_month(options["since"], "--since") if options["since"] else None
        try:
            tables = [get(options["table"])] if options["table"] else registered()
        except LookupError as exc:
            raise CommandError(str(exc)) from exc
        for table in tables:
            if not table.is_partitioned():
                self.stdout.write(f"{table.table}: not partitioned (not PostgreSQL).")
                continue
            created = [] if options["list"] else table.ensure(months_ahead=options["ahead"], since=since)
            months = table.months()
            span = f"{months[0]:%Y-%m} .. {months[-1]:%Y-%m}" if months else "none"
            self.stdout.write(
                f"{table.table}: created {', '.join(created) or 'none'}; {len(months)} monthly partitions ({span})"
                f" and {table.default_partition}."
            )
