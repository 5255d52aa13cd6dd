"""Each journal record carries its document's own id (`record_id`), unique with its time, so that a record
written twice (a write whose acknowledgement was lost, then shipped again from the spool) is stored once.

Records written before have none (NULL, which the constraint lets repeat). On PostgreSQL the constraint is
declared on the partitioned table: PostgreSQL builds its index on every partition, and gives it to every
partition made later (not CONCURRENTLY: records wait until it is built, those that wait past the statement
timeout go to the spool)."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("journal", "0009_staff_action_object_name")]

    operations = [
        migrations.AddField(
            model_name="journalrecord", name="record_id", field=models.UUIDField(blank=True, null=True)
        ),
        migrations.AddConstraint(
            model_name="journalrecord",
            constraint=models.UniqueConstraint(fields=("record_id", "occurred_at"), name="journal_record_once"),
        ),
    ]
