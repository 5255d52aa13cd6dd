"""On PostgreSQL the journal database itself refuses updates and deletes of records."""

from django.db import migrations

from playpay.postgresql.schema import on_postgresql

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


class Migration(migrations.Migration):
    dependencies = [("journal", "0001_initial")]
    operations = [on_postgresql(FORWARD, BACKWARD, hints={"journal_only": True})]
