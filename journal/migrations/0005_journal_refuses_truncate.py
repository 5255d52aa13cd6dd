"""On PostgreSQL the journal database refuses TRUNCATE of its records too, which skips the row-level
guard of 0002. Retention deletes whole periods (under playpay.journal_purge), never everything at once,
so no setting lets a TRUNCATE through. An ordinary trigger: a session with
session_replication_role = replica (a superuser's bulk restore, the test suite's cleanup) does not fire it.
"""

from typing import Any

from django.db import migrations

FORWARD = """
CREATE TRIGGER journalrecord_no_truncate BEFORE TRUNCATE ON journal_journalrecord
    FOR EACH STATEMENT EXECUTE FUNCTION playpay_journal_append_only();
"""
BACKWARD = """
DROP TRIGGER IF EXISTS journalrecord_no_truncate ON journal_journalrecord;
"""


def run(sql: str) -> Any:
    def apply(apps: Any, schema_editor: Any) -> None:
        if schema_editor.connection.vendor == "postgresql":
            with schema_editor.connection.cursor() as cursor:
                cursor.execute(sql)

    return apply


class Migration(migrations.Migration):
    dependencies = [("journal", "0004_staffaction")]
    operations = [migrations.RunPython(run(FORWARD), run(BACKWARD), hints={"journal_only": True})]
