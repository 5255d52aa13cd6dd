"""Staff roles as groups with the least permissions each needs: operations, finance, support (read-only)."""

from typing import Any

from django.contrib.auth.management import create_permissions
from django.db import migrations

VIEW_ALL = [
    "payments.view_payment",
    "payments.view_paymentstatuschange",
    "payments.view_webhookattempt",
    "payments.view_refund",
    "payments.view_reversal",
    "payments.view_app",
    "payments.view_carriernotification",
    "payments.view_webhookdelivery",
    "payments.view_staffaction",
    "carriers.view_carrier",
    "carriers.view_country",
    "carriers.view_pricepoint",
    "carriers.view_carrierhealth",
]
ROLES = {
    "support": VIEW_ALL,
    "finance": [
        *VIEW_ALL,
        "payments.view_ledgerentry",
        "payments.view_ledgerline",
    ],
    "operations": [
        *VIEW_ALL,
        "payments.refund_payment",
        "payments.reverse_payment",
        "payments.change_webhookdelivery",
        "carriers.change_carrier",
        "carriers.add_carrier",
        "carriers.add_pricepoint",
        "carriers.change_pricepoint",
        "carriers.view_numberprefix",
        "carriers.add_numberprefix",
        "carriers.change_numberprefix",
        "carriers.delete_numberprefix",
        "django_celery_beat.view_periodictask",
        "django_celery_beat.change_periodictask",
    ],
}


def create_roles(apps: Any, schema_editor: Any) -> None:
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    group_model = apps.get_model("auth", "Group")
    permission_model = apps.get_model("auth", "Permission")
    for role, codes in ROLES.items():
        group, _ = group_model.objects.get_or_create(name=role)
        for code in codes:
            app_label, codename = code.split(".")
            group.permissions.add(permission_model.objects.get(content_type__app_label=app_label, codename=codename))


def remove_roles(apps: Any, schema_editor: Any) -> None:
    apps.get_model("auth", "Group").objects.filter(name__in=ROLES).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("payments", "0009_staff_actions_and_permissions"),
        ("carriers", "0004_carrier_protocols"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
        ("auth", "0012_alter_user_first_name_max_length"),
    ]
    operations = [migrations.RunPython(create_roles, remove_roles)]
