"""Staff roles in migrations: grant a role (a group) permissions of an app, or take them back."""

from typing import Any

from django.contrib.auth.management import create_permissions


def grant_permissions(apps: Any, *, app_label: str, grants: dict[str, list[str]]) -> None:
    """Give each role (group, created if missing) the app's permissions `grants[role]` (codenames)."""
    app_config = apps.get_app_config(app_label)
    app_config.models_module = True  # the historical app has no models module; permissions need one
    create_permissions(app_config, apps=apps, verbosity=0)
    app_config.models_module = None
    group_model = apps.get_model("auth", "Group")
    permission_model = apps.get_model("auth", "Permission")
    for role, codenames in grants.items():
        group, _ = group_model.objects.get_or_create(name=role)
        group.permissions.add(
            *permission_model.objects.filter(content_type__app_label=app_label, codename__in=codenames)
        )


def revoke_permissions(apps: Any, *, app_label: str, grants: dict[str, list[str]]) -> None:
    group_model = apps.get_model("auth", "Group")
    permission_model = apps.get_model("auth", "Permission")
    for role, codenames in grants.items():
        for group in group_model.objects.filter(name=role):
            group.permissions.remove(
                *permission_model.objects.filter(content_type__app_label=app_label, codename__in=codenames)
            )
