from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand

from reporting.services import call_rollups


class Command(BaseCommand):
    help = (
        "Bring the carrier-call rollups up to the last whole hour now (the first build over months of the journal "
        "takes several steps; the periodic job does one a minute). --rebuild recomputes them from scratch."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--rebuild", action="store_true", help="forget the rollups and compute them again")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["rebuild"]:
            call_rollups.forget_carrier_call_rollups()
        for result in call_rollups.catch_up_carrier_call_rollups():
            self.stdout.write(str(result))
