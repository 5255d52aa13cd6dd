"""Declares the simulated aggregator's renewal schedule in django-celery-beat (only where the sandbox is installed:
its migrations run nowhere else)."""

from django.db import migrations

from playpay.beat import Entry, schedule, unschedule

ENTRIES: list[Entry] = [
    ("sandbox: aggregator simulator renews its subscriptions", "sandbox.tasks.run_aggregator_schedule", 60, "seconds"),
]


class Migration(migrations.Migration):
    dependencies = [
        ("sandbox", "0001_simulator_state"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]
    operations = [
        migrations.RunPython(lambda apps, _: schedule(apps, ENTRIES), lambda apps, _: unschedule(apps, ENTRIES))
    ]
