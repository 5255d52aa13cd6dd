"""On PostgreSQL the ledger refuses TRUNCATE too, which skips the row-level guards of 0008.

Ordinary triggers: a session with session_replication_role = replica (a superuser's bulk restore,
the test suite's cleanup) does not fire them, as for the guards of 0008.
"""

from django.db import migrations

from playpay.postgresql.schema import on_postgresql

FORWARD = """
CREATE TRIGGER ledgerline_no_truncate BEFORE TRUNCATE ON payments_ledgerline
    FOR EACH STATEMENT EXECUTE FUNCTION playpay_ledger_append_only();
CREATE TRIGGER ledgerentry_no_truncate BEFORE TRUNCATE ON payments_ledgerentry
    FOR EACH STATEMENT EXECUTE FUNCTION playpay_ledger_append_only();
"""

BACKWARD = """
DROP TRIGGER IF EXISTS ledgerline_no_truncate ON payments_ledgerline;
DROP TRIGGER IF EXISTS ledgerentry_no_truncate ON payments_ledgerentry;
"""


class Migration(migrations.Migration):
    dependencies = [("payments", "0014_app_and_staff_action_move")]
    operations = [on_postgresql(FORWARD, BACKWARD)]
