from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from carriers.catalogue import CATALOGUE_FILE, CatalogueError, import_catalogue, read_catalogue, seed_countries
from carriers.models import Carrier, Country, NetworkCode


class Command(BaseCommand):
    help = (
        "Refresh countries and the MCC/MNC carrier catalogue from a CSV (columns mcc, mnc, country_iso2, "
        "brand, operator). New carriers are inactive; configured carriers keep their settings."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--file", type=Path, default=CATALOGUE_FILE, help="CSV file (default: the shipped one)")
        parser.add_argument("--dry-run", action="store_true", help="Report what would change, change nothing")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            rows = read_catalogue(options["file"])
        except CatalogueError as exc:
            raise CommandError(str(exc)) from exc
        with transaction.atomic():
            countries = seed_countries(Country)
            report = import_catalogue(
                rows, country_model=Country, carrier_model=Carrier, network_code_model=NetworkCode
            )
            if options["dry_run"]:
                transaction.set_rollback(True)
        for line in report.rows_skipped[:20] + report.codes_moved[:20]:
            self.stderr.write(line)
        verb = "would be" if options["dry_run"] else "were"
        self.stdout.write(
            f"{len(rows)} rows read; {countries} countries, {report.carriers_created} carriers and "
            f"{report.codes_added} MCC/MNC codes {verb} added; {report.carriers_renamed} renamed; "
            f"{len(report.rows_skipped)} rows skipped."
        )
