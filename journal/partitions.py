"""Monthly partitions of the journal's records on PostgreSQL (see playpay.partitions).

`journal_journalrecord` is partitioned by RANGE (occurred_at) in the journal's own database. The append-only
row trigger is declared on the parent, so every partition has it; a TRUNCATE trigger is not inherited, so
each new partition gets its own (`partition_sql`).
"""

from playpay.partitions import PartitionedTable, register

NO_TRUNCATE = (
    "CREATE TRIGGER journalrecord_no_truncate BEFORE TRUNCATE ON {partition} "
    "FOR EACH STATEMENT EXECUTE FUNCTION playpay_journal_append_only()"
)

RECORDS = register(
    PartitionedTable(table="journal_journalrecord", column="occurred_at", using="journal", partition_sql=(NO_TRUNCATE,))
)
