"""Declares the periodic payment jobs in django-celery-beat, where operations can see and pause them."""

from django.db import migrations

from playpay.beat import Entry, schedule, unschedule

ENTRIES: list[Entry] = [
    ("payments: purge expired idempotency keys", "payments.tasks.purge_idempotency_keys", 60, "minutes"),
    ("payments: expire unconfirmed PIN payments", "payments.tasks.expire_abandoned", 1, "minutes"),
]


class Migration(migrations.Migration):
    dependencies = [("payments", "0001_initial"), ("django_celery_beat", "0019_alter_periodictasks_options")]
    operations = [
        migrations.RunPython(
            lambda apps, _: schedule(apps, ENTRIES), lambda apps, _: unschedule(apps, ENTRIES), elidable=False
        )
    ]
