"""Declares the hourly funnel rollups job in django-celery-beat."""

from django.db import migrations

from playpay.beat import Entry, schedule, unschedule

ENTRIES: list[Entry] = [("funnel: refresh hourly rollups", "funnel.tasks.refresh_funnel_rollups", 5, "minutes")]


class Migration(migrations.Migration):
    dependencies = [("funnel", "0003_rollups"), ("django_celery_beat", "0019_alter_periodictasks_options")]
    operations = [
        migrations.RunPython(lambda apps, _: schedule(apps, ENTRIES), lambda apps, _: unschedule(apps, ENTRIES))
    ]
