from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from sandbox.volume import VolumeError, generate_volume


class Command(BaseCommand):
    help = (
        "Add N realistic payments over the last months (18 by default), with their history, refunds, reversals, "
        "ledger, journal records, journeys and funnel events (2 per payment unless --events), made by "
        "PostgreSQL in set-based SQL. Run after migrate and seed_demo; PostgreSQL only (the journal too). "
        "Running it again adds as much again."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--payments", type=int, required=True, help="payments to add")
        parser.add_argument("--events", type=int, default=None, help="funnel events to add (2 per payment)")
        parser.add_argument("--months", type=int, default=18, help="months they span, this one included (18)")
        parser.add_argument("--seed", type=float, default=None, help="PostgreSQL's random seed, -1 to 1")
        parser.add_argument(
            "--journal-within-ttl",
            action="store_true",
            help="write only the journal records still within their kind's retention (JOURNAL_TTL_DAYS), as a "
            "deployment running the daily expiry job holds them (by default every interaction is journaled)",
        )
        indexes = parser.add_mutually_exclusive_group()
        indexes.add_argument(
            "--rebuild-indexes",
            action="store_true",
            default=None,
            help="drop the filled tables' secondary indexes before loading and build them again after (the default "
            "when those tables are empty); meanwhile reads on them have no secondary index",
        )
        indexes.add_argument(
            "--keep-indexes",
            dest="rebuild_indexes",
            action="store_false",
            help="insert through the indexes as they are (the default when the tables have rows)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        seed = options["seed"]
        if seed is not None and not -1 <= seed <= 1:
            raise CommandError("--seed is between -1 and 1 (PostgreSQL's setseed)")
        try:
            result = generate_volume(
                payments=options["payments"],
                events=options["events"],
                months=options["months"],
                seed=seed,
                rebuild_indexes=options["rebuild_indexes"],
                journal_within_ttl=options["journal_within_ttl"],
                progress=lambda message: self.stdout.write(message),
            )
        except VolumeError as error:
            raise CommandError(str(error)) from error
        per_million = result.seconds / result.payments * 1_000_000
        self.stdout.write(
            f"Added {result.payments:,} payments ({result.refunds:,} refunds, {result.reversals:,} reversals, "
            f"{result.history:,} status changes, {result.ledger_entries:,} ledger entries with "
            f"{result.ledger_lines:,} lines), {result.journeys:,} journeys with {result.events:,} funnel events "
            f"and {result.journal_records:,} journal records over {len(result.months)} months in "
            f"{result.seconds:.1f} s ({per_million:.0f} s per million payments)."
        )
