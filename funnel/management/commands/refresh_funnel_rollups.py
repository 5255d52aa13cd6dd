from argparse import ArgumentParser
from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand
from django.utils import timezone

from funnel.models import FunnelDefinition
from funnel.rollups import refresh_rollups


class Command(BaseCommand):
    help = "Compute the hourly funnel rollups of the last N days (all funnels, or one), e.g. for a new funnel."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--days", type=int, default=30, help="how many days back (30)")
        parser.add_argument("--funnel", help="the funnel's name (default: every funnel)")

    def handle(self, *args: Any, **options: Any) -> None:
        now = timezone.now()
        funnels = FunnelDefinition.objects.all()
        if options["funnel"]:
            funnels = funnels.filter(name=options["funnel"])
        for funnel in funnels:
            rows = refresh_rollups(funnel=funnel, since=now - timedelta(days=options["days"]), until=now)
            self.stdout.write(f"{funnel.name}: {rows} rollup rows over {options['days']} days")
