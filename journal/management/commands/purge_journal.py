from argparse import ArgumentParser
from datetime import UTC, datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from journal.services import purge


class Command(BaseCommand):
    help = "Retention: drop every journal record older than --before (a date, UTC). Nothing else deletes records."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--before", required=True, help="YYYY-MM-DD")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            before = datetime.strptime(options["before"], "%Y-%m-%d").replace(tzinfo=UTC)
        except ValueError as exc:
            raise CommandError("--before takes a date, YYYY-MM-DD") from exc
        self.stdout.write(f"{purge(before=before)} records older than {before:%Y-%m-%d} dropped.")
