"""A subscription's charge refers to its payment by (payment_id, payment_created_at), a composite foreign key
to the monthly-partitioned payments (payments 0022), as refunds and ledger entries do. PostgreSQL only: on
SQLite the payments are one table and Django's foreign key says db_constraint=False."""

from typing import Any

from django.db import migrations

TABLE = "subscriptions_subscriptioncharge"
NAME = "subscriptions_charge_payment_fk"


def add(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(
            f"ALTER TABLE {TABLE} ADD CONSTRAINT {NAME} FOREIGN KEY (payment_id, payment_created_at) "
            "REFERENCES payments_payment (id, created_at) DEFERRABLE INITIALLY DEFERRED"
        )


def drop(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"ALTER TABLE {TABLE} DROP CONSTRAINT {NAME}")


class Migration(migrations.Migration):
    dependencies = [("subscriptions", "0001_plans_subscriptions_charges")]
    operations = [migrations.RunPython(add, drop)]
