from typing import Any

from django.core.management.base import BaseCommand

from reporting.services import subscriber_counts


class Command(BaseCommand):
    help = (
        "Count the subscriptions again for the dashboard's subscribers now (PostgreSQL): after subscriptions were "
        "written with triggers off (a restore with --disable-triggers, session_replication_role = replica). "
        "Writers of subscriptions wait while it counts; readers do not."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        rows = subscriber_counts.recount()
        self.stdout.write(f"{rows} subscriber count rows" if subscriber_counts.enabled() else "SQLite: nothing to do")
