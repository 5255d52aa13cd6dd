"""On PostgreSQL the journal database itself refuses updates and deletes of records."""

from typing import Any

from django.db import migrations

FORWARD = """
CREATE OR REPLACE FUNCTION playpay_journal_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'the journal is append-only: % refused (retention drops whole periods)', TG_OP
        USING ERRCODE = 'integrity_constraint_violation';
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER journalrecord_append_only BEFORE UPDATE OR DELETE ON journal_journalrecord
    FOR EACH ROW WHEN (current_setting('playpay.journal_purge', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION playpay_journal_append_only();
"""
BACKWARD = """
DROP TRIGGER IF EXISTS journalrecord_append_only ON journal_journalrecord;
DROP FUNCTION IF EXISTS playpay_journal_append_only();
"""


def run(sql: str) -> Any:
    def apply(apps: Any, schema_editor: Any) -> None:
        if schema_editor.connection.vendor == "postgresql":
            with schema_editor.connection.cursor() as cursor:
                cursor.execute(sql)  # no parameters: the % is PL/pgSQL's

    return apply


class Migration(migrations.Migration):
    dependencies = [("journal", "0001_initial")]
    operations = [migrations.RunPython(run(FORWARD), run(BACKWARD), hints={"journal_only": True})]
