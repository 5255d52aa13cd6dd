"""Declares the carrier-side periodic jobs in django-celery-beat."""

from django.db import migrations

from playpay.beat import Entry, schedule, unschedule

ENTRIES: list[Entry] = [
    ("payments: relay the task outbox", "payments.tasks.relay_outbox", 30, "seconds"),
    ("payments: dispatch due charge attempts", "payments.tasks.dispatch_due_attempts", 30, "seconds"),
    ("payments: resolve unknown carrier outcomes", "payments.tasks.resolve_unknown_outcomes", 60, "seconds"),
    ("payments: dispatch due webhook deliveries", "payments.tasks.dispatch_due_webhooks", 30, "seconds"),
    ("carriers: refresh carrier health", "carriers.tasks.refresh_carrier_health", 60, "seconds"),
]


class Migration(migrations.Migration):
    dependencies = [("payments", "0003_outboxmessage_payment_carrier_data_and_more")]
    operations = [
        migrations.RunPython(lambda apps, _: schedule(apps, ENTRIES), lambda apps, _: unschedule(apps, ENTRIES))
    ]
