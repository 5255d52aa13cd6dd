"""Declares the periodic payment jobs in django-celery-beat, where operations can see and pause them."""

from typing import Any

from django.db import migrations

SCHEDULE = [
    ("payments: purge expired idempotency keys", "payments.tasks.purge_idempotency_keys", 60),
    ("payments: expire unconfirmed PIN payments", "payments.tasks.expire_abandoned", 1),
]


def schedule(apps: Any, schema_editor: Any) -> None:
    interval_model = apps.get_model("django_celery_beat", "IntervalSchedule")
    task_model = apps.get_model("django_celery_beat", "PeriodicTask")
    for name, task, minutes in SCHEDULE:
        interval, _ = interval_model.objects.get_or_create(every=minutes, period="minutes")
        task_model.objects.update_or_create(name=name, defaults={"task": task, "interval": interval})


def unschedule(apps: Any, schema_editor: Any) -> None:
    apps.get_model("django_celery_beat", "PeriodicTask").objects.filter(name__in=[n for n, _, _ in SCHEDULE]).delete()


class Migration(migrations.Migration):
    dependencies = [("payments", "0001_initial"), ("django_celery_beat", "0019_alter_periodictasks_options")]
    operations = [migrations.RunPython(schedule, unschedule)]
