"""Declares the carrier-side periodic jobs in django-celery-beat."""

from typing import Any

from django.db import migrations

SCHEDULE = [
    ("payments: relay the task outbox", "payments.tasks.relay_outbox", 30),
    ("payments: dispatch due charge attempts", "payments.tasks.dispatch_due_attempts", 30),
    ("payments: resolve unknown carrier outcomes", "payments.tasks.resolve_unknown_outcomes", 60),
    ("carriers: refresh carrier health", "carriers.tasks.refresh_carrier_health", 60),
]


def schedule(apps: Any, schema_editor: Any) -> None:
    interval_model = apps.get_model("django_celery_beat", "IntervalSchedule")
    task_model = apps.get_model("django_celery_beat", "PeriodicTask")
    for name, task, seconds in SCHEDULE:
        interval, _ = interval_model.objects.get_or_create(every=seconds, period="seconds")
        task_model.objects.update_or_create(name=name, defaults={"task": task, "interval": interval})


def unschedule(apps: Any, schema_editor: Any) -> None:
    apps.get_model("django_celery_beat", "PeriodicTask").objects.filter(name__in=[n for n, _, _ in SCHEDULE]).delete()


class Migration(migrations.Migration):
    dependencies = [("payments", "0003_outboxmessage_payment_carrier_data_and_more")]
    operations = [migrations.RunPython(schedule, unschedule)]
