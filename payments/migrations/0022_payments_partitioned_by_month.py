"""Payments are kept by month of their creation.

Everywhere: the idempotency key per app and the carrier reference per carrier are kept unique by two key tables,
`payments_paymentidempotencykey` (app, key) and `payments_paymentcarrierreference` (carrier, reference), each
row naming its payment by (id, created_at), filled from the existing payments (a carrier reference found on
more than one payment goes to the oldest); a webhook delivery gets `payment_created_at` (filled from its
payment); a payment's public id is unique with its `created_at`; payments get an index on (updated_at, id).
The foreign keys to the payment are Django's without a constraint of their own (db_constraint=False), the
database's kept as they are where the payments are a plain table (SQLite).

On PostgreSQL only: `payments_payment` becomes a table partitioned by RANGE (created_at), one partition per
month holding payments (back to 24 months), this month and the next three, and a DEFAULT partition; rows
copied with their ids, primary key (id, created_at), indexes and its own foreign keys under their names. The
status history, refunds, reversals, ledger entries, webhook deliveries and the key tables refer to their
payment by (payment_id, payment_created_at), the first five under their foreign keys' old names. Reversible.
"""

from typing import Any

import django.db.models.deletion
from django.db import migrations, models

import playpay.ids
from payments.partitions import PAYMENTS
from playpay.partitions import partition_existing, unpartition_existing

# Tables whose foreign key to the payment was Django's (payment_id) and becomes (payment_id, payment_created_at).
CHILDREN = (
    "payments_paymentstatuschange",
    "payments_refund",
    "payments_reversal",
    "payments_ledgerentry",
    "payments_webhookdelivery",
)
KEY_TABLES = ("payments_paymentidempotencykey", "payments_paymentcarrierreference")
REFERS = "REFERENCES payments_payment ({}) DEFERRABLE INITIALLY DEFERRED"


def fill(apps: Any, schema_editor: Any) -> None:
    schema_editor.execute(
        "UPDATE payments_webhookdelivery SET payment_created_at = (SELECT created_at FROM payments_payment "
        "WHERE payments_payment.id = payments_webhookdelivery.payment_id) WHERE payment_id IS NOT NULL"
    )
    schema_editor.execute(
        "INSERT INTO payments_paymentidempotencykey (app_id, key, payment_id, payment_created_at) "
        "SELECT app_id, idempotency_key, id, created_at FROM payments_payment WHERE idempotency_key <> ''"
    )
    # The oldest payment keeps a reference that a carrier gave to more than one (WHERE: SQLite's parser needs
    # one before ON CONFLICT).
    schema_editor.execute(
        "INSERT INTO payments_paymentcarrierreference (carrier_id, reference, payment_id, payment_created_at) "
        "SELECT carrier_id, carrier_reference, id, created_at FROM payments_payment WHERE carrier_reference <> '' "
        "ORDER BY id ON CONFLICT (carrier_id, reference) DO NOTHING"
    )


def _references(cursor: Any) -> list[tuple[str, str]]:
    """(table, constraint) of the foreign keys to the payments (their partitions' copies aside)."""
    cursor.execute(
        "SELECT conrelid::regclass::text, conname FROM pg_constraint WHERE contype = 'f' "
        "AND confrelid = 'payments_payment'::regclass AND conparentid = 0 ORDER BY 1, 2"
    )
    return [(table, name) for table, name in cursor.fetchall()]


def _drop(cursor: Any, references: list[tuple[str, str]]) -> None:
    for table, name in references:
        cursor.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')


def partition(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        references = _references(cursor)
        _drop(cursor, references)
        partition_existing(cursor, PAYMENTS)
        composite = REFERS.format("id, created_at")
        for table, name in references:
            cursor.execute(
                f'ALTER TABLE {table} ADD CONSTRAINT "{name}" FOREIGN KEY (payment_id, payment_created_at) {composite}'
            )
        for table in KEY_TABLES:
            cursor.execute(
                f"ALTER TABLE {table} ADD CONSTRAINT {table}_payment_fk "
                f"FOREIGN KEY (payment_id, payment_created_at) {composite}"
            )


def unpartition(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        references = _references(cursor)
        _drop(cursor, references)
        unpartition_existing(cursor, PAYMENTS)
        for table, name in references:
            if table in CHILDREN:
                cursor.execute(
                    f'ALTER TABLE {table} ADD CONSTRAINT "{name}" FOREIGN KEY (payment_id) {REFERS.format("id")}'
                )


def _unconstrained(
    model_name: str, related_name: str, on_delete: Any, *, one_to_one: bool = False, null: bool = False
) -> migrations.SeparateDatabaseAndState:
    """Django's foreign key to the payment loses its constraint in the state only: `partition` replaces it on
    PostgreSQL, and SQLite keeps its own."""
    kind = models.OneToOneField if one_to_one else models.ForeignKey
    field = kind(
        to="payments.payment",
        on_delete=on_delete,
        related_name=related_name,
        db_constraint=False,
        null=null,
        blank=null,
    )
    return migrations.SeparateDatabaseAndState(
        state_operations=[migrations.AlterField(model_name=model_name, name="payment", field=field)]
    )


def _key_table(
    name: str, key: tuple[str, models.Field[Any, Any]], owner: tuple[str, str], unique: str
) -> migrations.CreateModel:
    """A key table: (owner, key) unique, naming its payment by (payment_id, payment_created_at)."""
    return migrations.CreateModel(
        name=name,
        fields=[
            ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
            key,
            ("payment_created_at", models.DateTimeField(editable=False)),
            (owner[0], models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name="+", to=owner[1])),
            (
                "payment",
                models.ForeignKey(
                    db_constraint=False,
                    on_delete=django.db.models.deletion.CASCADE,
                    related_name="+",
                    to="payments.payment",
                ),
            ),
        ],
        options={"constraints": [models.UniqueConstraint(fields=(owner[0], key[0]), name=unique)]},
    )


class Migration(migrations.Migration):
    dependencies = [
        ("carriers", "0005_carrier_deduplicates_reference_code"),
        ("payments", "0021_refunds_reversals_partitioned_by_payment_month"),
        ("tenants", "0001_initial"),
    ]

    operations = [
        # First, so that the key table can take its name (and, reversed, give it back before it is restored).
        migrations.RemoveConstraint(model_name="payment", name="payment_idempotency_key_unique_per_app"),
        migrations.AlterField(
            model_name="payment",
            name="public_id",
            field=models.UUIDField(default=playpay.ids.new_public_id, editable=False),
        ),
        _key_table(
            "PaymentIdempotencyKey",
            ("key", models.CharField(max_length=255)),
            ("app", "tenants.app"),
            "payment_idempotency_key_unique_per_app",
        ),
        _key_table(
            "PaymentCarrierReference",
            ("reference", models.CharField(max_length=128)),
            ("carrier", "carriers.carrier"),
            "payment_carrier_reference_unique",
        ),
        migrations.AddField(
            model_name="webhookdelivery",
            name="payment_created_at",
            field=models.DateTimeField(
                blank=True, editable=False, help_text="The payment's created_at (its month, on PostgreSQL).", null=True
            ),
        ),
        migrations.RunPython(fill, migrations.RunPython.noop),
        _unconstrained("paymentstatuschange", "history", django.db.models.deletion.CASCADE),
        _unconstrained("refund", "refunds", django.db.models.deletion.PROTECT),
        _unconstrained("reversal", "reversal", django.db.models.deletion.PROTECT, one_to_one=True),
        _unconstrained("ledgerentry", "ledger_entries", django.db.models.deletion.PROTECT),
        _unconstrained("webhookdelivery", "+", django.db.models.deletion.SET_NULL, null=True),
        migrations.RunPython(partition, unpartition),
        # On the partitioned table: both hold the partition key.
        migrations.AddConstraint(
            model_name="payment",
            constraint=models.UniqueConstraint(fields=("public_id", "created_at"), name="payment_public_id_unique"),
        ),
        migrations.AddIndex(
            model_name="payment",
            index=models.Index(fields=["updated_at", "id"], name="payment_updated_idx"),
        ),
    ]
