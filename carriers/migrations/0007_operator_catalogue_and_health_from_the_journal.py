"""The operator catalogue becomes a view of its own (a proxy of Carrier), and carrier health is read from the
journal's carrier calls: the health row and the job that refreshed it from cache counters go."""

from django.db import migrations

from playpay.beat import Entry, schedule, unschedule

HEALTH_JOB: list[Entry] = [("carriers: refresh carrier health", "carriers.tasks.refresh_carrier_health", 60, "seconds")]


class Migration(migrations.Migration):
    dependencies = [
        ("carriers", "0006_configuration_history"),
        ("payments", "0004_schedule_carrier_jobs"),  # which scheduled the health job
        ("payments", "0010_staff_roles"),  # which granted its view permission
    ]

    operations = [
        migrations.CreateModel(
            name="OperatorCatalogue",
            fields=[],
            options={
                "verbose_name": "catalogue operator",
                "verbose_name_plural": "operator catalogue",
                "proxy": True,
                "indexes": [],
                "constraints": [],
            },
            bases=("carriers.carrier",),
        ),
        migrations.DeleteModel(name="CarrierHealth"),
        migrations.RunPython(lambda apps, _: unschedule(apps, HEALTH_JOB), lambda apps, _: schedule(apps, HEALTH_JOB)),
    ]
