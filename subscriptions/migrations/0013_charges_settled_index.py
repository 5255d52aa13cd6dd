"""An index of the charges by when they were settled, for the rollups' refresh (the charges settled since its last
run). Built CONCURRENTLY on PostgreSQL, so that the renewal engine's charges are not held up while it is built."""

from typing import Any

from django.db import migrations, models

INDEX = models.Index(
    condition=models.Q(("settled_at__isnull", False)), fields=["settled_at"], name="subscr_charge_settled_idx"
)


def create(apps: Any, schema_editor: Any) -> None:
    model = apps.get_model("subscriptions", "SubscriptionCharge")
    if schema_editor.connection.vendor != "postgresql":
        schema_editor.add_index(model, INDEX)
        return
    with schema_editor.connection.cursor() as cursor:
        # A build that failed half way leaves an invalid index of the name: dropped, so that running again builds it.
        cursor.execute("SELECT NOT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)", [INDEX.name])
        invalid = cursor.fetchone()
        if invalid and invalid[0]:
            cursor.execute(f"DROP INDEX CONCURRENTLY {INDEX.name}")
    schema_editor.add_index(model, INDEX, concurrently=True)


def drop(apps: Any, schema_editor: Any) -> None:
    schema_editor.remove_index(apps.get_model("subscriptions", "SubscriptionCharge"), INDEX)


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY cannot run in a transaction
    dependencies = [
        ("payments", "0027_payment_paced_index"),
        ("subscriptions", "0012_carrier_cancel_retries"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.AddIndex(model_name="subscriptioncharge", index=INDEX)],
            database_operations=[migrations.RunPython(create, drop)],
        ),
    ]
