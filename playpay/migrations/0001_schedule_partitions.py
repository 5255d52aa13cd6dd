"""Declares the one partition maintenance job, for every partitioned table, in django-celery-beat."""

from django.db import migrations

from playpay.beat import Entry, schedule, unschedule

ENTRIES: list[Entry] = [("create partitions ahead", "playpay.tasks.create_partitions_ahead", 6, "hours")]


class Migration(migrations.Migration):
    dependencies = [("django_celery_beat", "0019_alter_periodictasks_options")]
    operations = [
        migrations.RunPython(lambda apps, _: schedule(apps, ENTRIES), lambda apps, _: unschedule(apps, ENTRIES))
    ]
