"""Finance annotates and resolves the differences of a reconciliation (reporting 0014's permission)."""

from typing import Any

from django.db import migrations

from playpay.roles import grant_permissions, revoke_permissions

GRANTS = {"finance": ["resolve_settlementfile", "view_reconciliationnote"]}


def grant(apps: Any, schema_editor: Any) -> None:
    grant_permissions(apps, app_label="reporting", grants=GRANTS)


def revoke(apps: Any, schema_editor: Any) -> None:
    revoke_permissions(apps, app_label="reporting", grants=GRANTS)


class Migration(migrations.Migration):
    dependencies = [("reporting", "0015_reconciliation_notes")]
    operations = [migrations.RunPython(grant, revoke)]
