"""Plans and offers keep their configuration history; subscriptions get the permission to cancel them, an index
for the admin's search by number; the staff roles get their subscription permissions: every role reads
plans, offers and subscriptions, operations also configure plans and offers and cancel subscriptions."""

from typing import Any

import django.db.models.deletion
import simple_history.models
from django.conf import settings
from django.db import migrations, models

from playpay.roles import grant_permissions, revoke_permissions

READ = [
    "view_plan",
    "view_planoffer",
    "view_subscription",
    "view_subscriptionstatuschange",
    "view_subscriptioncharge",
]
GRANTS = {
    "support": READ,
    "finance": READ,
    "operations": [
        *READ,
        "add_plan",
        "change_plan",
        "add_planoffer",
        "change_planoffer",
        "delete_planoffer",
        "cancel_subscription",
    ],
}


def grant(apps: Any, schema_editor: Any) -> None:
    grant_permissions(apps, app_label="subscriptions", grants=GRANTS)


def revoke(apps: Any, schema_editor: Any) -> None:
    revoke_permissions(apps, app_label="subscriptions", grants=GRANTS)


class Migration(migrations.Migration):
    dependencies = [
        ("carriers", "0007_operator_catalogue_and_health_from_the_journal"),
        ("subscriptions", "0003_schedule_renewals"),
        ("tenants", "0002_configuration_history"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
        ("auth", "0012_alter_user_first_name_max_length"),
    ]

    operations = [
        migrations.CreateModel(
            name="HistoricalPlan",
            fields=[
                ("id", models.BigIntegerField(auto_created=True, blank=True, db_index=True, verbose_name="ID")),
                ("code", models.SlugField(help_text="The app's code of the plan, e.g. vip-weekly.", max_length=64)),
                ("name", models.CharField(help_text="Shown to the player in the opt-in message.", max_length=100)),
                (
                    "period",
                    models.CharField(
                        choices=[("daily", "Daily"), ("weekly", "Weekly"), ("monthly", "Monthly")], max_length=10
                    ),
                ),
                (
                    "trial_days",
                    models.PositiveSmallIntegerField(
                        default=0,
                        help_text="Free days before the first charge (0: none). Needs the carrier's consent flow.",
                    ),
                ),
                (
                    "is_active",
                    models.BooleanField(default=True, help_text="Inactive: no new subscriptions; existing ones renew."),
                ),
                ("created_at", models.DateTimeField(blank=True, editable=False)),
                ("history_id", models.AutoField(primary_key=True, serialize=False)),
                ("history_date", models.DateTimeField(db_index=True)),
                ("history_change_reason", models.CharField(max_length=100, null=True)),
                (
                    "history_type",
                    models.CharField(choices=[("+", "Created"), ("~", "Changed"), ("-", "Deleted")], max_length=1),
                ),
            ],
            options={
                "verbose_name": "historical plan",
                "verbose_name_plural": "historical plans",
                "ordering": ("-history_date", "-history_id"),
                "get_latest_by": ("history_date", "history_id"),
            },
            bases=(simple_history.models.HistoricalChanges, models.Model),
        ),
        migrations.CreateModel(
            name="HistoricalPlanOffer",
            fields=[
                ("id", models.BigIntegerField(auto_created=True, blank=True, db_index=True, verbose_name="ID")),
                ("history_id", models.AutoField(primary_key=True, serialize=False)),
                ("history_date", models.DateTimeField(db_index=True)),
                ("history_change_reason", models.CharField(max_length=100, null=True)),
                (
                    "history_type",
                    models.CharField(choices=[("+", "Created"), ("~", "Changed"), ("-", "Deleted")], max_length=1),
                ),
            ],
            options={
                "verbose_name": "historical plan offer",
                "verbose_name_plural": "historical plan offers",
                "ordering": ("-history_date", "-history_id"),
                "get_latest_by": ("history_date", "history_id"),
            },
            bases=(simple_history.models.HistoricalChanges, models.Model),
        ),
        migrations.AlterModelOptions(
            name="subscription",
            options={"ordering": ["-id"], "permissions": [("cancel_subscription", "Can cancel subscriptions")]},
        ),
        migrations.AddIndex(
            model_name="subscription",
            index=models.Index(fields=["msisdn"], name="subscription_msisdn_idx"),
        ),
        migrations.AddField(
            model_name="historicalplan",
            name="app",
            field=models.ForeignKey(
                blank=True,
                db_constraint=False,
                null=True,
                on_delete=django.db.models.deletion.DO_NOTHING,
                related_name="+",
                to="tenants.app",
            ),
        ),
        migrations.AddField(
            model_name="historicalplan",
            name="history_user",
            field=models.ForeignKey(
                null=True, on_delete=django.db.models.deletion.SET_NULL, related_name="+", to=settings.AUTH_USER_MODEL
            ),
        ),
        migrations.AddField(
            model_name="historicalplanoffer",
            name="carrier",
            field=models.ForeignKey(
                blank=True,
                db_constraint=False,
                null=True,
                on_delete=django.db.models.deletion.DO_NOTHING,
                related_name="+",
                to="carriers.carrier",
            ),
        ),
        migrations.AddField(
            model_name="historicalplanoffer",
            name="first_period_price_point",
            field=models.ForeignKey(
                blank=True,
                db_constraint=False,
                help_text="Charged for the first period instead (a discount); empty: the regular price.",
                null=True,
                on_delete=django.db.models.deletion.DO_NOTHING,
                related_name="+",
                to="carriers.pricepoint",
            ),
        ),
        migrations.AddField(
            model_name="historicalplanoffer",
            name="history_user",
            field=models.ForeignKey(
                null=True, on_delete=django.db.models.deletion.SET_NULL, related_name="+", to=settings.AUTH_USER_MODEL
            ),
        ),
        migrations.AddField(
            model_name="historicalplanoffer",
            name="plan",
            field=models.ForeignKey(
                blank=True,
                db_constraint=False,
                null=True,
                on_delete=django.db.models.deletion.DO_NOTHING,
                related_name="+",
                to="subscriptions.plan",
            ),
        ),
        migrations.AddField(
            model_name="historicalplanoffer",
            name="price_point",
            field=models.ForeignKey(
                blank=True,
                db_constraint=False,
                null=True,
                on_delete=django.db.models.deletion.DO_NOTHING,
                related_name="+",
                to="carriers.pricepoint",
            ),
        ),
        migrations.RunPython(grant, revoke),
    ]
