from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand

from reporting.services import rollups


class Command(BaseCommand):
    help = (
        "Bring the payment rollups up to the last whole hour now (the first build over months of payments "
        "takes several steps; the periodic job does one a minute). --rebuild recomputes them from scratch."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--rebuild", action="store_true", help="forget the rollups and compute them again")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["rebuild"]:
            rollups.forget_payment_rollups()
        for result in rollups.catch_up_payment_rollups():
            self.stdout.write(str(result))
