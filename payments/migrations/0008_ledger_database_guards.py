"""On PostgreSQL the database itself keeps the ledger append-only and every entry balanced."""

from typing import Any

from django.db import migrations

FORWARD = """
CREATE OR REPLACE FUNCTION playpay_ledger_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'the ledger is append-only: % on % refused; post an opposite entry', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'integrity_constraint_violation';
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER ledgerline_append_only BEFORE UPDATE OR DELETE ON payments_ledgerline
    FOR EACH ROW EXECUTE FUNCTION playpay_ledger_append_only();
CREATE TRIGGER ledgerentry_append_only BEFORE UPDATE OR DELETE ON payments_ledgerentry
    FOR EACH ROW EXECUTE FUNCTION playpay_ledger_append_only();

CREATE OR REPLACE FUNCTION playpay_ledger_entry_balanced() RETURNS trigger AS $$
DECLARE
    unbalanced record;
BEGIN
    SELECT currency, SUM(amount_minor) AS total INTO unbalanced
        FROM payments_ledgerline WHERE entry_id = NEW.entry_id
        GROUP BY currency HAVING SUM(amount_minor) <> 0 LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'ledger entry % does not balance in %: %', NEW.entry_id, unbalanced.currency, unbalanced.total
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

-- Checked at commit, once all the lines of the entry are in.
CREATE CONSTRAINT TRIGGER ledgerline_entry_balanced AFTER INSERT ON payments_ledgerline
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION playpay_ledger_entry_balanced();
"""

BACKWARD = """
DROP TRIGGER IF EXISTS ledgerline_entry_balanced ON payments_ledgerline;
DROP TRIGGER IF EXISTS ledgerline_append_only ON payments_ledgerline;
DROP TRIGGER IF EXISTS ledgerentry_append_only ON payments_ledgerentry;
DROP FUNCTION IF EXISTS playpay_ledger_entry_balanced();
DROP FUNCTION IF EXISTS playpay_ledger_append_only();
"""


def forward(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        with schema_editor.connection.cursor() as cursor:
            cursor.execute(FORWARD)  # no parameters: the % in the messages are PL/pgSQL's


def backward(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        with schema_editor.connection.cursor() as cursor:
            cursor.execute(BACKWARD)


class Migration(migrations.Migration):
    dependencies = [("payments", "0007_ledger_refunds_reversals")]
    operations = [migrations.RunPython(forward, backward)]
