"""Player blocks (an app takes no more payments from a number or a user), and who may set them."""

from typing import Any

import django.db.models.deletion
from django.contrib.auth.management import create_permissions
from django.db import migrations, models

# Support and operations block players; operations also read numbers in full (the others see them masked).
BLOCKING = ["payments.view_playerblock", "payments.add_playerblock", "payments.delete_playerblock"]
GRANTS = {"support": BLOCKING, "operations": [*BLOCKING, "payments.view_full_msisdn"]}


def grant(apps: Any, schema_editor: Any) -> None:
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    group_model = apps.get_model("auth", "Group")
    permission_model = apps.get_model("auth", "Permission")
    for role, codes in GRANTS.items():
        group, _ = group_model.objects.get_or_create(name=role)
        for code in codes:
            app_label, codename = code.split(".")
            group.permissions.add(permission_model.objects.get(content_type__app_label=app_label, codename=codename))


class Migration(migrations.Migration):
    dependencies = [
        ("payments", "0024_refund_approvals"),
        ("tenants", "0001_initial"),
    ]

    operations = [
        migrations.CreateModel(
            name="PlayerBlock",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                (
                    "msisdn",
                    models.CharField(
                        blank=True,
                        help_text="E.164; empty when a user is blocked.",
                        max_length=16,
                        verbose_name="MSISDN",
                    ),
                ),
                ("user_ref", models.CharField(blank=True, help_text="Empty when a number is blocked.", max_length=128)),
                ("reason", models.CharField(max_length=255)),
                ("blocked_by", models.CharField(help_text="staff:<username>", max_length=150)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                (
                    "app",
                    models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name="+", to="tenants.app"),
                ),
            ],
            options={
                "permissions": [("view_full_msisdn", "Can see players' full phone numbers")],
                "indexes": [
                    models.Index(
                        condition=models.Q(("msisdn", ""), _negated=True),
                        fields=["msisdn"],
                        name="player_block_msisdn_idx",
                    )
                ],
                "constraints": [
                    models.CheckConstraint(
                        condition=models.Q(
                            models.Q(("msisdn", ""), models.Q(("user_ref", ""), _negated=True)),
                            models.Q(models.Q(("msisdn", ""), _negated=True), ("user_ref", "")),
                            _connector="OR",
                        ),
                        name="player_block_number_or_user",
                    ),
                    models.UniqueConstraint(
                        condition=models.Q(("msisdn", ""), _negated=True),
                        fields=("app", "msisdn"),
                        name="player_block_number_once_per_app",
                    ),
                    models.UniqueConstraint(
                        condition=models.Q(("user_ref", ""), _negated=True),
                        fields=("app", "user_ref"),
                        name="player_block_user_once_per_app",
                    ),
                ],
            },
        ),
        migrations.RunPython(grant, migrations.RunPython.noop),
    ]
