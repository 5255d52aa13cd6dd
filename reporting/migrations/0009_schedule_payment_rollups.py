"""Declares the payment rollups job in django-celery-beat."""

from django.db import migrations

from playpay.beat import Entry, schedule, unschedule

ENTRIES: list[Entry] = [("reporting: refresh payment rollups", "reporting.tasks.refresh_payment_rollups", 1, "minutes")]


class Migration(migrations.Migration):
    dependencies = [("reporting", "0008_payment_rollups"), ("django_celery_beat", "0019_alter_periodictasks_options")]
    operations = [
        migrations.RunPython(lambda apps, _: schedule(apps, ENTRIES), lambda apps, _: unschedule(apps, ENTRIES))
    ]
