import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    """App, ApiKey and StaffAction left for tenants and journal (state only: the tables moved there)."""

    dependencies = [
        ("funnel", "0008_app_moves_to_tenants"),
        ("journal", "0004_staffaction"),
        ("payments", "0013_app_webhook_url"),
        ("tenants", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="idempotencyrecord",
                    name="app",
                    field=models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="idempotency_records",
                        to="tenants.app",
                    ),
                ),
                migrations.AlterField(
                    model_name="webhooksecret",
                    name="app",
                    field=models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE, related_name="webhook_secrets", to="tenants.app"
                    ),
                ),
                migrations.AlterField(
                    model_name="payment",
                    name="app",
                    field=models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT, related_name="payments", to="tenants.app"
                    ),
                ),
                migrations.AlterField(
                    model_name="webhookdelivery",
                    name="app",
                    field=models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE, related_name="webhook_deliveries", to="tenants.app"
                    ),
                ),
                migrations.RemoveField(
                    model_name="staffaction",
                    name="user",
                ),
                migrations.DeleteModel(
                    name="ApiKey",
                ),
                migrations.DeleteModel(
                    name="App",
                ),
                migrations.DeleteModel(
                    name="StaffAction",
                ),
            ],
            database_operations=[],
        ),
    ]
