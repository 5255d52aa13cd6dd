"""Declares the journal's spool drain in django-celery-beat."""

from django.db import migrations

from playpay.beat import Entry, schedule, unschedule

ENTRIES: list[Entry] = [("journal: drain the spool into the store", "journal.tasks.drain_journal_spool", 60, "seconds")]


class Migration(migrations.Migration):
    dependencies = [("journal", "0002_append_only"), ("django_celery_beat", "0019_alter_periodictasks_options")]
    operations = [
        migrations.RunPython(lambda apps, _: schedule(apps, ENTRIES), lambda apps, _: unschedule(apps, ENTRIES))
    ]
