"""The ledger is kept with its payment's month.

Everywhere: ledger entries and lines get `payment_created_at`, their payment's `created_at` (filled for the
existing rows, the append-only guards off for that one update), and "one charge and one reversal entry per
payment" is keyed by (payment, payment_created_at, kind), which the payment alone decides.

On PostgreSQL only: `payments_ledgerentry` and `payments_ledgerline` become tables partitioned by RANGE
(payment_created_at), like the status history (0019): rows copied with their ids, primary keys
(id, payment_created_at). A line refers to its entry by (entry_id, payment_created_at), under the foreign key's
old name; an entry's refund is unique by (refund_id, payment_created_at) (a refund belongs to one payment, so
to one month: unique across partitions). The append-only guards (row triggers on the parents, TRUNCATE
triggers on the parents and on every partition) and the deferred check that each entry balances are declared
again; the balance check reads only the entry's partition; the row guards let through only the partition
maintenance moving a month's rows out of the default partition (`playpay.partition_move`). Reversible.
"""

from typing import Any

from django.db import migrations, models

from payments.partitions import ENTRIES, LINES
from playpay.partitions import partition_existing, unpartition_existing

LINE_ENTRY_KEY = "payments_ledgerline_entry_id_31444bb0_fk_payments_"
REFUND_KEY = "payments_ledgerentry_refund_id_key"
GUARDS = ("ledgerline_append_only", "ledgerline_entry_balanced", "ledgerentry_append_only")

BALANCED = """
CREATE OR REPLACE FUNCTION playpay_ledger_entry_balanced() RETURNS trigger AS $$
DECLARE
    unbalanced record;
BEGIN
    SELECT currency, SUM(amount_minor) AS total INTO unbalanced
        FROM payments_ledgerline WHERE entry_id = NEW.entry_id AND payment_created_at = NEW.payment_created_at
        GROUP BY currency HAVING SUM(amount_minor) <> 0 LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'ledger entry % does not balance in %: %', NEW.entry_id, unbalanced.currency, unbalanced.total
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;
"""
OLD_BALANCED = BALANCED.replace(" AND payment_created_at = NEW.payment_created_at", "")
# The partition maintenance moves a month's rows out of the default partition (a move, not a change).
MOVE = "current_setting('playpay.partition_move', true) IS DISTINCT FROM 'on'"
TRIGGERS = f"""
CREATE TRIGGER ledgerline_append_only BEFORE UPDATE OR DELETE ON payments_ledgerline
    FOR EACH ROW WHEN ({MOVE}) EXECUTE FUNCTION playpay_ledger_append_only();
CREATE TRIGGER ledgerentry_append_only BEFORE UPDATE OR DELETE ON payments_ledgerentry
    FOR EACH ROW WHEN ({MOVE}) EXECUTE FUNCTION playpay_ledger_append_only();
CREATE CONSTRAINT TRIGGER ledgerline_entry_balanced AFTER INSERT ON payments_ledgerline
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION playpay_ledger_entry_balanced();
CREATE TRIGGER ledgerline_no_truncate BEFORE TRUNCATE ON payments_ledgerline
    FOR EACH STATEMENT EXECUTE FUNCTION playpay_ledger_append_only();
CREATE TRIGGER ledgerentry_no_truncate BEFORE TRUNCATE ON payments_ledgerentry
    FOR EACH STATEMENT EXECUTE FUNCTION playpay_ledger_append_only();
"""


OLD_TRIGGERS = TRIGGERS.replace(f"WHEN ({MOVE}) ", "")


def fill(apps: Any, schema_editor: Any) -> None:
    postgresql = schema_editor.connection.vendor == "postgresql"
    with schema_editor.connection.cursor() as cursor:
        if postgresql:  # a one-off fill of a new column, not a change of what the ledger says
            cursor.execute("ALTER TABLE payments_ledgerentry DISABLE TRIGGER ledgerentry_append_only")
            cursor.execute("ALTER TABLE payments_ledgerline DISABLE TRIGGER ledgerline_append_only")
        cursor.execute(
            "UPDATE payments_ledgerentry SET payment_created_at = (SELECT created_at FROM payments_payment "
            "WHERE payments_payment.id = payments_ledgerentry.payment_id)"
        )
        cursor.execute(
            "UPDATE payments_ledgerline SET payment_created_at = (SELECT payment_created_at FROM payments_ledgerentry "
            "WHERE payments_ledgerentry.id = payments_ledgerline.entry_id)"
        )
        if postgresql:
            cursor.execute("ALTER TABLE payments_ledgerentry ENABLE TRIGGER ledgerentry_append_only")
            cursor.execute("ALTER TABLE payments_ledgerline ENABLE TRIGGER ledgerline_append_only")


def _drop_guards(cursor: Any) -> None:
    for trigger in GUARDS:
        table = "payments_ledgerentry" if trigger.startswith("ledgerentry") else "payments_ledgerline"
        cursor.execute(f"DROP TRIGGER {trigger} ON {table}")


def partition(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        _drop_guards(cursor)
        cursor.execute(f"ALTER TABLE payments_ledgerline DROP CONSTRAINT {LINE_ENTRY_KEY}")
        cursor.execute(f"ALTER TABLE payments_ledgerentry DROP CONSTRAINT {REFUND_KEY}")
        partition_existing(cursor, ENTRIES, months_of=("payments_payment", "created_at"))
        partition_existing(cursor, LINES, months_of=("payments_payment", "created_at"))
        cursor.execute(
            f"CREATE UNIQUE INDEX {REFUND_KEY} ON payments_ledgerentry (refund_id, payment_created_at) "
            "WHERE refund_id IS NOT NULL"
        )
        cursor.execute(
            f"ALTER TABLE payments_ledgerline ADD CONSTRAINT {LINE_ENTRY_KEY} FOREIGN KEY (entry_id, payment_created_at) "
            "REFERENCES payments_ledgerentry (id, payment_created_at) DEFERRABLE INITIALLY DEFERRED"
        )
        cursor.execute(BALANCED)
        cursor.execute(TRIGGERS)


def unpartition(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        _drop_guards(cursor)
        cursor.execute(f"ALTER TABLE payments_ledgerline DROP CONSTRAINT {LINE_ENTRY_KEY}")
        cursor.execute(f"DROP INDEX {REFUND_KEY}")
        unpartition_existing(cursor, LINES)
        unpartition_existing(cursor, ENTRIES)
        cursor.execute(f"ALTER TABLE payments_ledgerentry ADD CONSTRAINT {REFUND_KEY} UNIQUE (refund_id)")
        cursor.execute(
            f"ALTER TABLE payments_ledgerline ADD CONSTRAINT {LINE_ENTRY_KEY} FOREIGN KEY (entry_id) "
            "REFERENCES payments_ledgerentry (id) DEFERRABLE INITIALLY DEFERRED"
        )
        cursor.execute(OLD_BALANCED)
        cursor.execute(OLD_TRIGGERS)


class Migration(migrations.Migration):
    dependencies = [("payments", "0019_status_history_partitioned_by_payment_month")]

    operations = [
        migrations.AddField(
            model_name="ledgerentry",
            name="payment_created_at",
            field=models.DateTimeField(editable=False, null=True, help_text="The payment's created_at."),
        ),
        migrations.AddField(
            model_name="ledgerline",
            name="payment_created_at",
            field=models.DateTimeField(editable=False, null=True, help_text="The entry's payment_created_at."),
        ),
        migrations.RunPython(fill, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="ledgerentry",
            name="payment_created_at",
            field=models.DateTimeField(editable=False, help_text="The payment's created_at."),
        ),
        migrations.AlterField(
            model_name="ledgerline",
            name="payment_created_at",
            field=models.DateTimeField(editable=False, help_text="The entry's payment_created_at."),
        ),
        migrations.RemoveConstraint(model_name="ledgerentry", name="ledger_one_charge_and_reversal_per_payment"),
        migrations.AddConstraint(
            model_name="ledgerentry",
            constraint=models.UniqueConstraint(
                condition=models.Q(("kind__in", ["charge", "reversal"])),
                fields=("payment", "payment_created_at", "kind"),
                name="ledger_one_charge_and_reversal_per_payment",
            ),
        ),
        migrations.RunPython(partition, unpartition),
    ]
