import uuid
from decimal import Decimal

import django.db.models.deletion
from django.db import migrations, models


def _move_content_types(apps, schema_editor, models, old, new):
    """Keep permissions and admin log entries: the content types follow the models to their new app."""
    content_type = apps.get_model("contenttypes", "ContentType")
    for model in models:
        if not content_type.objects.filter(app_label=new, model=model).exists():
            content_type.objects.filter(app_label=old, model=model).update(app_label=new)


def forwards(apps, schema_editor):
    _move_content_types(apps, schema_editor, ["app", "apikey"], "payments", "tenants")


def backwards(apps, schema_editor):
    _move_content_types(apps, schema_editor, ["app", "apikey"], "tenants", "payments")


class Migration(migrations.Migration):
    """App and ApiKey move from payments: their tables are renamed, their rows stay."""

    initial = True

    dependencies = [
        ("payments", "0013_app_webhook_url"),
        # Every migration that creates a foreign key to payments_app runs before it is renamed.
        ("funnel", "0007_schedule_partitions"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="App",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                            ),
                        ),
                        ("public_id", models.UUIDField(default=uuid.uuid4, editable=False, unique=True)),
                        ("name", models.CharField(max_length=100, unique=True)),
                        ("webhook_url", models.URLField(blank=True, help_text="Where PlayPay sends payment webhooks.")),
                        ("is_active", models.BooleanField(default=True)),
                        (
                            "rate_limit_per_minute",
                            models.PositiveIntegerField(
                                blank=True,
                                help_text="API requests per minute; empty for the platform default.",
                                null=True,
                            ),
                        ),
                        (
                            "revenue_share",
                            models.DecimalField(
                                decimal_places=4,
                                default=Decimal("0.8500"),
                                help_text="The app's share of what remains after tax and the carrier's share, 0 to 1.",
                                max_digits=5,
                            ),
                        ),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                    ],
                    options={
                        "ordering": ["name"],
                        "constraints": [
                            models.CheckConstraint(
                                condition=models.Q(("revenue_share__gte", 0), ("revenue_share__lte", 1)),
                                name="app_revenue_share_range",
                            )
                        ],
                    },
                ),
                migrations.CreateModel(
                    name="ApiKey",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                            ),
                        ),
                        ("prefix", models.CharField(editable=False, max_length=16, unique=True)),
                        ("key_hash", models.CharField(editable=False, max_length=64)),
                        ("label", models.CharField(blank=True, max_length=100)),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                        ("revoked_at", models.DateTimeField(blank=True, null=True)),
                        (
                            "app",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE, related_name="api_keys", to="tenants.app"
                            ),
                        ),
                    ],
                    options={
                        "verbose_name": "API key",
                        "ordering": ["-created_at"],
                    },
                ),
            ],
            database_operations=[
                migrations.RunSQL(
                    "ALTER TABLE payments_app RENAME TO tenants_app",
                    "ALTER TABLE tenants_app RENAME TO payments_app",
                ),
                migrations.RunSQL(
                    "ALTER TABLE payments_apikey RENAME TO tenants_apikey",
                    "ALTER TABLE tenants_apikey RENAME TO payments_apikey",
                ),
            ],
        ),
        migrations.RunPython(forwards, backwards),
    ]
