"""Periodic tasks are declared once, in data migrations, as django-celery-beat entries
that operations can see and pause in the admin. These helpers take the migration's apps."""

from typing import Any

# (name shown in the admin, task, every, period) with period "seconds", "minutes", "hours" or "days"
Entry = tuple[str, str, int, str]


def schedule(apps: Any, entries: list[Entry]) -> None:
    interval_model = apps.get_model("django_celery_beat", "IntervalSchedule")
    task_model = apps.get_model("django_celery_beat", "PeriodicTask")
    for name, task, every, period in entries:
        interval, _ = interval_model.objects.get_or_create(every=every, period=period)
        task_model.objects.update_or_create(name=name, defaults={"task": task, "interval": interval})


def unschedule(apps: Any, entries: list[Entry]) -> None:
    names = [entry[0] for entry in entries]
    apps.get_model("django_celery_beat", "PeriodicTask").objects.filter(name__in=names).delete()
