"""Declares the check for exports whose worker died in django-celery-beat (the scheduler runs it without a broker)."""

from django.db import migrations

from playpay.beat import Entry, schedule, unschedule

ENTRIES: list[Entry] = [
    ("reporting: re-queue exports whose worker died", "reporting.tasks.requeue_stale_exports", 1, "minutes")
]


class Migration(migrations.Migration):
    dependencies = [
        ("reporting", "0006_export_job_heartbeat"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]
    operations = [
        migrations.RunPython(lambda apps, _: schedule(apps, ENTRIES), lambda apps, _: unschedule(apps, ENTRIES))
    ]
