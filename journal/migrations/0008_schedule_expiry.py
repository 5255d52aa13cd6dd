"""Declares the journal's retention per kind in django-celery-beat (daily)."""

from django.db import migrations

from playpay.beat import Entry, schedule, unschedule

ENTRIES: list[Entry] = [("journal: expire records", "journal.tasks.expire_journal_records", 1, "days")]


class Migration(migrations.Migration):
    dependencies = [
        ("journal", "0007_records_partitioned_by_month"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]
    operations = [
        migrations.RunPython(lambda apps, _: schedule(apps, ENTRIES), lambda apps, _: unschedule(apps, ENTRIES))
    ]
