"""Declares the renewal engine's periodic run in django-celery-beat."""

from django.db import migrations

from playpay.beat import Entry, schedule, unschedule

ENTRIES: list[Entry] = [
    ("subscriptions: charge due renewals", "subscriptions.tasks.renew_due_subscriptions", 60, "seconds"),
]


class Migration(migrations.Migration):
    dependencies = [
        ("subscriptions", "0002_charge_refers_to_payment_month"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]
    operations = [
        migrations.RunPython(lambda apps, _: schedule(apps, ENTRIES), lambda apps, _: unschedule(apps, ENTRIES))
    ]
