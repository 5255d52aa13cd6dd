"""Journal records partitioned by month (PostgreSQL only; elsewhere nothing changes).

`journal_journalrecord` becomes a table partitioned by RANGE (occurred_at): one partition per month holding
records (back to 24 months), this month and the next three, and a DEFAULT partition; its rows are copied
over, ids and the id sequence kept. Its primary key is (id, occurred_at); its indexes keep their names.
The append-only guards are declared again: the row trigger on the parent (every partition has it), which now
also lets through the partition maintenance moving a month's rows out of the default partition
(`playpay.partition_move`), and a TRUNCATE trigger on the parent and on each partition. Reversible.
"""

from typing import Any

from django.db import migrations

from journal.partitions import NO_TRUNCATE, RECORDS
from playpay.partitions import partition_existing, unpartition_existing

TABLE = "journal_journalrecord"
ROW_TRIGGER = """
CREATE TRIGGER journalrecord_append_only BEFORE UPDATE OR DELETE ON journal_journalrecord
    FOR EACH ROW WHEN (
        current_setting('playpay.journal_purge', true) IS DISTINCT FROM 'on'
        AND current_setting('playpay.partition_move', true) IS DISTINCT FROM 'on'
    )
    EXECUTE FUNCTION playpay_journal_append_only()
"""
OLD_ROW_TRIGGER = """
CREATE TRIGGER journalrecord_append_only BEFORE UPDATE OR DELETE ON journal_journalrecord
    FOR EACH ROW WHEN (current_setting('playpay.journal_purge', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION playpay_journal_append_only()
"""


def partition(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        partition_existing(cursor, RECORDS)
        cursor.execute(ROW_TRIGGER)
        cursor.execute(NO_TRUNCATE.format(partition=TABLE))


def unpartition(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        unpartition_existing(cursor, RECORDS)
        cursor.execute(OLD_ROW_TRIGGER)
        cursor.execute(NO_TRUNCATE.format(partition=TABLE))


class Migration(migrations.Migration):
    dependencies = [("journal", "0006_spool_moves_to_disk")]
    operations = [migrations.RunPython(partition, unpartition, hints={"journal_only": True})]
