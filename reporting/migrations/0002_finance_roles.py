"""Reporting's share of the staff roles (payments 0010): finance and operations export; finance reconciles."""

from typing import Any

from django.contrib.auth.management import create_permissions
from django.db import migrations

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
    app_config = apps.get_app_config("reporting")
    app_config.models_module = True
    create_permissions(app_config, apps=apps, verbosity=0)
    app_config.models_module = None
    group_model = apps.get_model("auth", "Group")
    permission_model = apps.get_model("auth", "Permission")
    for role, codenames in GRANTS.items():
        group, _ = group_model.objects.get_or_create(name=role)
        group.permissions.add(
            *permission_model.objects.filter(content_type__app_label="reporting", codename__in=codenames)
        )


def revoke(apps: Any, schema_editor: Any) -> None:
    group_model = apps.get_model("auth", "Group")
    permission_model = apps.get_model("auth", "Permission")
    for role, codenames in GRANTS.items():
        for group in group_model.objects.filter(name=role):
            group.permissions.remove(
                *permission_model.objects.filter(content_type__app_label="reporting", codename__in=codenames)
            )


class Migration(migrations.Migration):
    dependencies = [
        ("reporting", "0001_initial"),
        ("payments", "0010_staff_roles"),
    ]
    operations = [migrations.RunPython(grant, revoke)]
