from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from journal.services import expire


class Command(BaseCommand):
    help = (
        "Retention per kind: drop every journal record past its kind's time (JOURNAL_TTL_DAYS, "
        "JOURNAL_TTL_DEFAULT_DAYS for the other kinds), as the daily job does."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        kept = ", ".join(f"{kind} {days} d" for kind, days in sorted(settings.JOURNAL_TTL_DAYS.items()))
        self.stdout.write(
            f"{expire()} records dropped (kept: {kept}; other kinds {settings.JOURNAL_TTL_DEFAULT_DAYS} d)."
        )
