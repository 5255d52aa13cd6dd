"""The events' (app_id, journey_id, occurred_at) index also carries the step (INCLUDE), so that a funnel
report reads a period's events by an index-only scan, in the order it groups them, without visiting the
table for each event. The new index is built before the old one is dropped; on a partitioned table
PostgreSQL builds it on every partition (not CONCURRENTLY: inserts wait until it is built)."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("funnel", "0011_rollup_days")]

    operations = [
        migrations.AddIndex(
            model_name="funnelevent",
            index=models.Index(
                fields=["app", "journey_id", "occurred_at"], include=("step",), name="funnel_event_journey_idx"
            ),
        ),
        migrations.RemoveIndex(model_name="funnelevent", name="funnel_funn_app_id_4b199a_idx"),
    ]
