from argparse import ArgumentParser
from typing import Any

from django.core.management import call_command
from django.core.management.base import BaseCommand

from funnel.partitions import TABLE


class Command(BaseCommand):
    help = "The events table's partitions: `manage.py partitions --table funnel_funnelevent` (kept for scripts)."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--since", help="first month to have a partition, YYYY-MM (to load older events)")
        parser.add_argument("--ahead", type=int, help="months ahead")

    def handle(self, *args: Any, **options: Any) -> None:
        extra = [f"--{name}={options[name]}" for name in ("since", "ahead") if options[name] is not None]
        call_command("partitions", "--table", TABLE, *extra, stdout=self.stdout)
