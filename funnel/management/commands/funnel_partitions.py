from argparse import ArgumentParser
from datetime import date
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from funnel.partitions import MONTHS_AHEAD, ensure_partitions, is_partitioned, partitions


class Command(BaseCommand):
    help = (
        "Create the monthly partitions of the funnel events table (PostgreSQL): this month, the next ones, "
        "those the default partition has rows for, and with --since every month from then on."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--since", help="first month to have a partition, YYYY-MM (to load older events)")
        parser.add_argument("--ahead", type=int, default=MONTHS_AHEAD, help=f"months ahead ({MONTHS_AHEAD})")

    def handle(self, *args: Any, **options: Any) -> None:
        if not is_partitioned():
            self.stdout.write("Not PostgreSQL: the events table is not partitioned.")
            return
        since = None
        if options["since"]:
            try:
                year, month = (int(part) for part in options["since"].split("-"))
                since = date(year, month, 1)
            except ValueError as exc:
                raise CommandError("--since is YYYY-MM") from exc
        created = ensure_partitions(months_ahead=options["ahead"], since=since)
        self.stdout.write(f"Created: {', '.join(created) or 'none'}. Partitions: {', '.join(partitions())}.")
