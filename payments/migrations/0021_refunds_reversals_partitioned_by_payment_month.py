"""Refunds and reversals are kept with their payment's month.

Everywhere: each refund and reversal gets `payment_created_at`, its payment's `created_at` (filled for the
existing rows from their payments).

On PostgreSQL only: `payments_refund` and `payments_reversal` become tables partitioned by RANGE
(payment_created_at), like the status history and the ledger (0019, 0020): rows copied with their ids, primary
keys (id, payment_created_at), indexes and foreign keys to the payment under their names. Unique keys must hold
the partition key, so, under their old names: one reversal per payment is (payment_id, payment_created_at),
global since a payment has one `created_at`; a refund's public id is (public_id, payment_created_at) (ids are
made here, 74 or 122 random bits: no second refund gets one). A ledger entry refers to its refund by
(refund_id, payment_created_at), under the foreign key's old name. Reversible.
"""

from typing import Any

from django.db import migrations, models

from payments.partitions import REFUNDS, REVERSALS
from playpay.partitions import partition_existing, unpartition_existing

ENTRY_REFUND_KEY = "payments_ledgerentry_refund_id_7617e5a8_fk_payments_refund_id"
PUBLIC_ID_KEY = "payments_refund_public_id_key"
ONE_REVERSAL_KEY = "payments_reversal_payment_id_key"
MONTHS_OF = ("payments_payment", "created_at")


def fill(apps: Any, schema_editor: Any) -> None:
    for table in ("payments_refund", "payments_reversal"):
        schema_editor.execute(
            f"UPDATE {table} SET payment_created_at = ("
            f"SELECT created_at FROM payments_payment WHERE payments_payment.id = {table}.payment_id)"
        )


def partition(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE payments_ledgerentry DROP CONSTRAINT {ENTRY_REFUND_KEY}")
        cursor.execute(f"ALTER TABLE payments_refund DROP CONSTRAINT {PUBLIC_ID_KEY}")
        cursor.execute(f"ALTER TABLE payments_reversal DROP CONSTRAINT {ONE_REVERSAL_KEY}")
        partition_existing(cursor, REFUNDS, months_of=MONTHS_OF)
        partition_existing(cursor, REVERSALS, months_of=MONTHS_OF)
        cursor.execute(
            f"ALTER TABLE payments_refund ADD CONSTRAINT {PUBLIC_ID_KEY} UNIQUE (public_id, payment_created_at)"
        )
        cursor.execute(
            f"ALTER TABLE payments_reversal ADD CONSTRAINT {ONE_REVERSAL_KEY} UNIQUE (payment_id, payment_created_at)"
        )
        cursor.execute(
            f"ALTER TABLE payments_ledgerentry ADD CONSTRAINT {ENTRY_REFUND_KEY} "
            "FOREIGN KEY (refund_id, payment_created_at) REFERENCES payments_refund (id, payment_created_at) "
            "DEFERRABLE INITIALLY DEFERRED"
        )


def unpartition(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE payments_ledgerentry DROP CONSTRAINT {ENTRY_REFUND_KEY}")
        cursor.execute(f"ALTER TABLE payments_refund DROP CONSTRAINT {PUBLIC_ID_KEY}")
        cursor.execute(f"ALTER TABLE payments_reversal DROP CONSTRAINT {ONE_REVERSAL_KEY}")
        unpartition_existing(cursor, REVERSALS)
        unpartition_existing(cursor, REFUNDS)
        cursor.execute(f"ALTER TABLE payments_refund ADD CONSTRAINT {PUBLIC_ID_KEY} UNIQUE (public_id)")
        cursor.execute(f"ALTER TABLE payments_reversal ADD CONSTRAINT {ONE_REVERSAL_KEY} UNIQUE (payment_id)")
        cursor.execute(
            f"ALTER TABLE payments_ledgerentry ADD CONSTRAINT {ENTRY_REFUND_KEY} "
            "FOREIGN KEY (refund_id) REFERENCES payments_refund (id) DEFERRABLE INITIALLY DEFERRED"
        )


class Migration(migrations.Migration):
    dependencies = [("payments", "0020_ledger_partitioned_by_payment_month")]

    operations = [
        migrations.AddField(
            model_name="refund",
            name="payment_created_at",
            field=models.DateTimeField(editable=False, null=True, help_text="The payment's created_at."),
        ),
        migrations.AddField(
            model_name="reversal",
            name="payment_created_at",
            field=models.DateTimeField(editable=False, null=True, help_text="The payment's created_at."),
        ),
        migrations.RunPython(fill, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="refund",
            name="payment_created_at",
            field=models.DateTimeField(editable=False, help_text="The payment's created_at."),
        ),
        migrations.AlterField(
            model_name="reversal",
            name="payment_created_at",
            field=models.DateTimeField(editable=False, help_text="The payment's created_at."),
        ),
        migrations.RunPython(partition, unpartition),
    ]
