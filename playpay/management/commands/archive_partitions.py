from argparse import ArgumentParser
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import IntegrityError
from django.utils import timezone

from playpay.partitions import MonthUnsettled, get


class Command(BaseCommand):
    help = (
        "Take the months older than --older-than-days out of a partitioned table (PostgreSQL): each month's "
        "partition is detached, copied to <dir>/<partition>.csv.gz (<partition>.2.csv.gz, .3, … for a month "
        "archived before: a file is never overwritten; COPY, with a header), the file's row count "
        "checked against the partition's, then the partition dropped. A month whose check fails stays detached "
        "(outside every query, nothing lost) and the command fails; run again, it takes it up."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--table", required=True, help="e.g. journal_journalrecord, funnel_funnelevent")
        parser.add_argument("--older-than-days", type=int, required=True, help="months ending before now - this")
        parser.add_argument("--dir", help="archive directory (settings.PARTITION_ARCHIVE_DIR)")
        parser.add_argument("--dry-run", action="store_true", help="list the months only")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            table = get(options["table"])
        except LookupError as exc:
            raise CommandError(str(exc)) from exc
        if not table.is_partitioned():
            self.stdout.write(f"{table.table}: not partitioned (not PostgreSQL); nothing to archive.")
            return
        if options["older_than_days"] < 1:
            raise CommandError("--older-than-days is at least 1")
        directory = Path(options["dir"] or settings.PARTITION_ARCHIVE_DIR)
        months = table.months_before(timezone.now() - timedelta(days=options["older_than_days"]))
        # Months an earlier run left detached come first: their rows are in no query until archived.
        pending = [month for name in table.detached() if (month := table.month_of(name)) is not None]
        for month in sorted(set(pending) | set(months)):
            if options["dry_run"]:
                self.stdout.write(f"would archive {table.partition_name(month)}")
                continue
            try:
                archived = table.archive(month, directory)
            except MonthUnsettled as exc:
                raise CommandError(str(exc)) from exc
            except IntegrityError as exc:
                raise CommandError(
                    f"{table.partition_name(month)} is still referred to ({exc}): archive the referring table's "
                    "month first (ledger lines before ledger entries before refunds; history and reversals; "
                    "then payments)"
                ) from exc
            self.stdout.write(f"{archived.partition}: {archived.rows} rows -> {archived.path}")
        if not months and not pending:
            self.stdout.write("nothing to archive")
