"""Reporting's share of the staff roles (payments 0010): finance and operations export; finance reconciles."""

from typing import Any

from django.db import migrations

from playpay.roles import grant_permissions, revoke_permissions

GRANTS = {
    "finance": [
        "view_exportjob",
        "add_exportjob",
        "view_settlementfile",
        "add_settlementfile",
        "delete_settlementfile",
    ],
    "operations": ["view_exportjob", "add_exportjob", "view_settlementfile"],
}


def grant(apps: Any, schema_editor: Any) -> None:
    grant_permissions(apps, app_label="reporting", grants=GRANTS)


def revoke(apps: Any, schema_editor: Any) -> None:
    revoke_permissions(apps, app_label="reporting", grants=GRANTS)


class Migration(migrations.Migration):
    dependencies = [
        ("reporting", "0001_initial"),
        ("payments", "0010_staff_roles"),
    ]
    operations = [migrations.RunPython(grant, revoke)]
