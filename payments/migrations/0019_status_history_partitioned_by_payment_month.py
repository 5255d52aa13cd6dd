"""A payment's status history is kept with the payment's month.

Everywhere: each status change gets `payment_created_at`, its payment's `created_at` (filled for the existing
rows from their payments).
On PostgreSQL only: `payments_paymentstatuschange` becomes a table partitioned by RANGE (payment_created_at),
one partition per month holding payments (back to 24 months), this month and the next three, and a DEFAULT
partition; its rows are copied over with their ids and the id sequence carries on. Its primary key is
(id, payment_created_at); its index and its foreign key to the payment keep their names. Reversible.
"""

from typing import Any

from django.db import migrations, models

from payments.partitions import HISTORY
from playpay.partitions import partition_existing, unpartition_existing


def fill(apps: Any, schema_editor: Any) -> None:
    schema_editor.execute(
        "UPDATE payments_paymentstatuschange SET payment_created_at = ("
        "SELECT created_at FROM payments_payment WHERE payments_payment.id = payments_paymentstatuschange.payment_id)"
    )


def partition(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        with schema_editor.connection.cursor() as cursor:
            partition_existing(cursor, HISTORY, months_of=("payments_payment", "created_at"))


def unpartition(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        with schema_editor.connection.cursor() as cursor:
            unpartition_existing(cursor, HISTORY)


class Migration(migrations.Migration):
    dependencies = [("payments", "0018_public_ids_time_ordered")]

    operations = [
        migrations.AddField(
            model_name="paymentstatuschange",
            name="payment_created_at",
            field=models.DateTimeField(editable=False, null=True, help_text="The payment's created_at."),
        ),
        migrations.RunPython(fill, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="paymentstatuschange",
            name="payment_created_at",
            field=models.DateTimeField(editable=False, help_text="The payment's created_at."),
        ),
        migrations.RunPython(partition, unpartition),
    ]
