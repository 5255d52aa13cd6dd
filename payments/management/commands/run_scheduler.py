import logging
import threading
import time
from argparse import ArgumentParser
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import InterfaceError, OperationalError, close_old_connections, connections
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from payments.services import outbox
from playpay.celery import app as celery_app

logger = logging.getLogger(__name__)
# While the database is unreachable the scheduler waits twice as long after each failed cycle, up to this.
MAX_BACKOFF_SECONDS = 60.0


class Command(BaseCommand):
    help = (
        "For the embedded default only (no broker): run the enabled periodic tasks from the admin's "
        "Periodic tasks in this process, on their intervals, and the queued background work (exports) in a "
        "thread of its own. With a broker, run `celery -A playpay beat` and workers. "
        "A database outage is logged once and waited out (with backoff); the loop keeps running."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--tick", type=float, default=5.0, help="seconds between checks")
        parser.add_argument("--once", action="store_true", help="run every enabled task once, then stop")
        parser.add_argument("--cycles", type=int, default=0, help="stop after this many checks (0: never)")

    def handle(self, *args: Any, **options: Any) -> None:
        if not outbox.runs_in_process():
            raise CommandError("a broker is configured: run `celery -A playpay beat` and workers instead")
        # Every installed app's tasks module, as a worker imports them at its start: a periodic task is found by
        # its name, whatever this process happened to import.
        celery_app.autodiscover_tasks(force=True)
        last_run: dict[int, float] = {}
        failures = 0
        cycles = 0
        worker: threading.Thread | None = None
        while True:
            cycles += 1
            if not options["once"] and (worker is None or not worker.is_alive()):
                # One at a time, beside the loop: an export of a million rows must not hold up the periodic tasks.
                worker = threading.Thread(target=self._work_in_thread, name="scheduler-work", daemon=True)
                worker.start()
            try:
                self._run_due(last_run, once=options["once"])
            except (OperationalError, InterfaceError) as exc:
                if not failures:
                    logger.error("database unavailable, periodic tasks wait until it is back: %s", exc)
                failures += 1
                close_old_connections()  # the broken connection is dropped; the next check reconnects
            else:
                if failures:
                    logger.warning("database reachable again after %d failed checks", failures)
                failures = 0
            if options["once"]:
                self._work()
            if options["once"] or cycles == options["cycles"]:
                if worker is not None:
                    worker.join()
                return
            time.sleep(min(options["tick"] * 2 ** min(failures, 10), max(MAX_BACKOFF_SECONDS, options["tick"])))

    def _run_due(self, last_run: dict[int, float], *, once: bool) -> None:
        for task in PeriodicTask.objects.filter(enabled=True, interval__isnull=False).select_related("interval"):
            interval = task.interval
            assert interval is not None
            every = timedelta(**{interval.period: interval.every}).total_seconds()
            if once or time.monotonic() - last_run.get(task.pk, -every) >= every:
                last_run[task.pk] = time.monotonic()
                try:
                    # An eager result never blocks; a Celery worker started earlier in this process (the tests start
                    # them in threads) leaves the flag that forbids .get() inside a task set, so it is not consulted.
                    result = celery_app.tasks[task.task].apply().get(disable_sync_subtasks=False)
                except Exception as exc:
                    self.stderr.write(f"{timezone.now():%H:%M:%S} {task.name}: failed: {exc}")
                else:
                    if result:
                        self.stdout.write(f"{timezone.now():%H:%M:%S} {task.name}: {result}")

    def _work(self) -> None:
        """The tasks of SCHEDULER_WORKER_TASKS, each run until it has nothing left (a worker's share)."""
        for name in settings.SCHEDULER_WORKER_TASKS:
            try:
                result = celery_app.tasks[name]()  # a plain call: it runs every tick, mostly finding nothing
            except (OperationalError, InterfaceError):
                return  # the database is away: the loop reports the outage once, and this runs again after it
            except Exception as exc:
                logger.exception("%s failed", name)
                self.stderr.write(f"{timezone.now():%H:%M:%S} {name}: failed: {exc}")
            else:
                if result:
                    self.stdout.write(f"{timezone.now():%H:%M:%S} {name}: {result}")

    def _work_in_thread(self) -> None:
        try:
            self._work()
        finally:
            connections.close_all()  # this thread's own connections
