import os
import sys
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from carriers.adapters import carrier_queue
from carriers.models import Carrier


class Command(BaseCommand):
    help = (
        "Run a Celery worker for the outbound calls of chosen carriers (queues carrier.<slug>), "
        "so that each carrier's workers scale on their own. Extra arguments go to `celery worker`."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--carriers", required=True, help="comma-separated slugs, or 'all' for every active one")
        parser.add_argument("--concurrency", type=int, default=4)
        parser.add_argument("extra", nargs="*", help="more `celery worker` options, after --")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["carriers"] == "all":
            carriers = list(Carrier.objects.filter(is_active=True))
        else:
            slugs = [slug.strip() for slug in options["carriers"].split(",") if slug.strip()]
            carriers = list(Carrier.objects.filter(slug__in=slugs))
            missing = set(slugs) - {carrier.slug for carrier in carriers}
            if missing:
                raise CommandError(f"unknown carrier(s): {', '.join(sorted(missing))}")
        if not carriers:
            raise CommandError("no carrier to work for")
        queues = ",".join(carrier_queue(carrier) for carrier in carriers)
        # Celery from this interpreter, not whatever `celery` is first on PATH (a service manager's PATH
        # rarely holds the virtualenv's bin).
        argv = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "playpay",
            "worker",
            "-Q",
            queues,
            "--concurrency",
            str(options["concurrency"]),
        ]
        argv += ["--hostname", f"carriers-{os.getpid()}@%h", *options["extra"]]
        self.stdout.write(f"celery worker for {queues}")
        os.execv(argv[0], argv)  # noqa: S606 - replaces this process with the worker
