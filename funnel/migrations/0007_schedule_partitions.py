"""Declares the partition maintenance job of the funnel events table in django-celery-beat."""

from django.db import migrations

from playpay.beat import Entry, schedule, unschedule

ENTRIES: list[Entry] = [("funnel: create event partitions", "funnel.tasks.create_funnel_event_partitions", 6, "hours")]


class Migration(migrations.Migration):
    dependencies = [("funnel", "0006_rollup_hours"), ("django_celery_beat", "0019_alter_periodictasks_options")]
    operations = [
        migrations.RunPython(lambda apps, _: schedule(apps, ENTRIES), lambda apps, _: unschedule(apps, ENTRIES))
    ]
