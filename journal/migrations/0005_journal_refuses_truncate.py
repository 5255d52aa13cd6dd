"""On PostgreSQL the journal database refuses TRUNCATE of its records too, which skips the row-level
guard of 0002. Retention deletes whole periods (under playpay.journal_purge), never everything at once,
so no setting lets a TRUNCATE through. An ordinary trigger: a session with
session_replication_role = replica (a superuser's bulk restore, the test suite's cleanup) does not fire it.
"""

from django.db import migrations

from playpay.postgresql.schema import on_postgresql

FORWARD = """
CREATE TRIGGER journalrecord_no_truncate BEFORE TRUNCATE ON journal_journalrecord
    FOR EACH STATEMENT EXECUTE FUNCTION playpay_journal_append_only();
"""
BACKWARD = """
DROP TRIGGER IF EXISTS journalrecord_no_truncate ON journal_journalrecord;
"""


class Migration(migrations.Migration):
    dependencies = [("journal", "0004_staffaction")]
    operations = [on_postgresql(FORWARD, BACKWARD, hints={"journal_only": True})]
