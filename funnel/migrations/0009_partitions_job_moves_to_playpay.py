"""The events table's partitions are now created by the shared job of every partitioned table
(playpay 0001, *create partitions ahead*): the funnel's own entry goes.

The reverse schedules nothing: the shared job (which this migration depends on) keeps creating the events'
partitions, and the funnel's own task no longer exists, so an entry naming it would only fail every run."""

from django.db import migrations

from playpay.beat import Entry, unschedule

ENTRIES: list[Entry] = [("funnel: create event partitions", "funnel.tasks.create_funnel_event_partitions", 6, "hours")]


class Migration(migrations.Migration):
    dependencies = [("funnel", "0008_app_moves_to_tenants"), ("playpay", "0001_schedule_partitions")]
    operations = [migrations.RunPython(lambda apps, _: unschedule(apps, ENTRIES), migrations.RunPython.noop)]
