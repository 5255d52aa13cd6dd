import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    """App moved to tenants: only Django's state changes, the foreign keys already point at its table."""

    dependencies = [
        ("funnel", "0007_schedule_partitions"),
        ("tenants", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="funneldefinition",
                    name="app",
                    field=models.ForeignKey(
                        blank=True,
                        help_text="Empty: every app.",
                        null=True,
                        on_delete=django.db.models.deletion.CASCADE,
                        to="tenants.app",
                    ),
                ),
                migrations.AlterField(
                    model_name="funnelevent",
                    name="app",
                    field=models.ForeignKey(
                        db_constraint=False,
                        db_index=False,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="funnel_events",
                        to="tenants.app",
                    ),
                ),
                migrations.AlterField(
                    model_name="funneleventkey",
                    name="app",
                    field=models.ForeignKey(
                        db_constraint=False,
                        db_index=False,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="+",
                        to="tenants.app",
                    ),
                ),
                migrations.AlterField(
                    model_name="funnelrollup",
                    name="app",
                    field=models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE, related_name="+", to="tenants.app"
                    ),
                ),
                migrations.AlterField(
                    model_name="journey",
                    name="app",
                    field=models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT, related_name="journeys", to="tenants.app"
                    ),
                ),
            ],
            database_operations=[],
        ),
    ]
