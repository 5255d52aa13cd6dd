"""The analytics tier's shipping marks, the index it reads changed journeys by, and its periodic job
(which does nothing until CLICKHOUSE_URL is set)."""

from django.db import migrations, models

from playpay.beat import Entry, schedule, unschedule

ENTRIES: list[Entry] = [("funnel: ship to ClickHouse", "funnel.tasks.ship_to_clickhouse", 1, "minutes")]


class Migration(migrations.Migration):
    dependencies = [
        ("funnel", "0009_partitions_job_moves_to_playpay"),
        ("tenants", "0001_initial"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [
        migrations.CreateModel(
            name="AnalyticsShipment",
            fields=[
                ("source", models.CharField(max_length=40, primary_key=True, serialize=False)),
                ("last_id", models.BigIntegerField(default=0)),
                ("last_updated_at", models.DateTimeField(blank=True, null=True)),
                (
                    "rows",
                    models.BigIntegerField(default=0, help_text="Rows shipped so far (a row sent again counts again)."),
                ),
                (
                    "shipped_at",
                    models.DateTimeField(blank=True, help_text="Rows written before this are shipped.", null=True),
                ),
                ("shipped_up_to", models.DateTimeField(blank=True, null=True)),
            ],
        ),
        migrations.AddIndex(
            model_name="journey",
            index=models.Index(fields=["updated_at", "id"], name="journey_updated_idx"),
        ),
        migrations.RunPython(lambda apps, _: schedule(apps, ENTRIES), lambda apps, _: unschedule(apps, ENTRIES)),
    ]
