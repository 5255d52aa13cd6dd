"""The Celery application; configuration comes from Django settings (CELERY_*)."""

import os
from typing import Any

from celery import Celery, Task, signals

from playpay.logging import bound

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "playpay.settings")


class ContextTask(Task):  # type: ignore[type-arg]
    """Every task runs in a log scope carrying its id and name (`playpay.logging`)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with bound(task_id=self.request.id, task_name=self.name):
            return super().__call__(*args, **kwargs)


app = Celery("playpay", task_cls="playpay.celery:ContextTask")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@signals.setup_logging.connect
def _log_like_the_web(**_: Any) -> None:
    """Workers and beat log through settings.LOGGING (JSON, LOG_LEVEL) instead of Celery's own set-up,
    whose --loglevel (WARNING by default) would otherwise hide the INFO lines of tasks."""
    import logging.config

    from django.conf import settings

    logging.config.dictConfig(settings.LOGGING)


@signals.worker_init.connect
def _serve_worker_metrics(**_: Any) -> None:
    """Carrier calls are made by the workers: with METRICS_PORT set, a worker serves its own metrics."""
    port = os.environ.get("METRICS_PORT", "")
    if port:
        from playpay.metrics import serve_process_metrics

        serve_process_metrics(port=int(port), addr=os.environ.get("METRICS_ADDR", "127.0.0.1"))


@signals.worker_process_shutdown.connect
def _forget_finished_process(pid: int | None = None, **_: Any) -> None:
    from playpay.metrics import mark_process_dead

    mark_process_dead(pid or os.getpid())
