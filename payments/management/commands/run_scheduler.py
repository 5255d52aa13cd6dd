import time
from argparse import ArgumentParser
from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from payments.services import outbox
from playpay.celery import app as celery_app


class Command(BaseCommand):
    help = (
        "For the embedded default only (no broker): run the enabled periodic tasks from the admin's "
        "Periodic tasks in this process, on their intervals. With a broker, run `celery -A playpay beat`."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--tick", type=float, default=5.0, help="seconds between checks")
        parser.add_argument("--once", action="store_true", help="run every enabled task once, then stop")

    def handle(self, *args: Any, **options: Any) -> None:
        if not outbox.runs_in_process():
            raise CommandError("a broker is configured: run `celery -A playpay beat` and workers instead")
        last_run: dict[int, float] = {}
        while True:
            for task in PeriodicTask.objects.filter(enabled=True, interval__isnull=False).select_related("interval"):
                interval = task.interval
                assert interval is not None
                every = timedelta(**{interval.period: interval.every}).total_seconds()
                if options["once"] or time.monotonic() - last_run.get(task.pk, -every) >= every:
                    last_run[task.pk] = time.monotonic()
                    try:
                        result = celery_app.tasks[task.task].apply().get()
                    except Exception as exc:
                        self.stderr.write(f"{timezone.now():%H:%M:%S} {task.name}: failed: {exc}")
                    else:
                        if result:
                            self.stdout.write(f"{timezone.now():%H:%M:%S} {task.name}: {result}")
            if options["once"]:
                return
            time.sleep(options["tick"])
