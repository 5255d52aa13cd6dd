"""Subscription-charge rollups (reporting.services.rollups, kind `subscription_charges`), and the renewal success
per period counted on each period's first attempt (the catalog's `period_decided` and `period_renewed`, summed)
instead of distinct periods, so that the rollups can keep it.

The payment rollups' state is forgotten: the periodic refresh builds every kind again from the oldest payment, in
its bounded steps (a month of history a run), the charges' hours with the rest; readers use raw rows for what is
not covered yet, as after a first deploy.
"""

from typing import Any

import django.db.models.deletion
from django.db import migrations, models

# The seeded `subscription-charges` dataset's period measures: (name, source field, aggregation).
PERIODS = [("periods_decided", "period_decided", "sum"), ("periods_renewed", "period_renewed", "sum")]
BEFORE = [
    ("periods_decided", "decided_period", "count_distinct"),
    ("periods_renewed", "renewed_period", "count_distinct"),
]
DESCRIPTION = (
    "Every charge of a subscription (the opt-in's first period and each renewal attempt), by the time it was made: "
    "recurring revenue (charged amounts, gross of refunds), renewal success rate (per period: of the periods first "
    "tried in the period, those decided and those renewed on any attempt so far; and per attempt), paying subscribers."
)


def _measures(apps: Any, measures: list[tuple[str, str, str]]) -> None:
    fields = apps.get_model("reporting", "DatasetField").objects.filter(dataset__slug="subscription-charges")
    for name, source, aggregation in measures:
        fields.filter(name=name).update(source=source, aggregation=aggregation)


def forward(apps: Any, schema_editor: Any) -> None:
    _measures(apps, PERIODS)
    apps.get_model("reporting", "Dataset").objects.filter(slug="subscription-charges").update(description=DESCRIPTION)
    apps.get_model("reporting", "RollupState").objects.all().delete()


def backward(apps: Any, schema_editor: Any) -> None:
    _measures(apps, BEFORE)


class Migration(migrations.Migration):
    dependencies = [
        ("carriers", "0009_carrier_downgrade_billing"),
        ("reporting", "0018_subscription_counts"),
        ("subscriptions", "0013_charges_settled_index"),
        ("tenants", "0002_configuration_history"),
    ]

    operations = [
        migrations.CreateModel(
            name="SubscriptionChargeDayRollup",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("hour", models.DateTimeField()),
                ("currency", models.CharField(max_length=3, null=True)),
                ("kind", models.CharField(max_length=8)),
                ("outcome", models.CharField(max_length=10)),
                ("failure_code", models.CharField(max_length=64)),
                ("charges", models.BigIntegerField()),
                ("amount_minor", models.BigIntegerField(null=True)),
                ("amount_min_minor", models.BigIntegerField(null=True)),
                ("amount_max_minor", models.BigIntegerField(null=True)),
                ("periods_decided", models.BigIntegerField()),
                ("periods_renewed", models.BigIntegerField()),
                (
                    "app",
                    models.ForeignKey(
                        db_constraint=False,
                        on_delete=django.db.models.deletion.DO_NOTHING,
                        related_name="+",
                        to="tenants.app",
                    ),
                ),
                (
                    "carrier",
                    models.ForeignKey(
                        db_constraint=False,
                        on_delete=django.db.models.deletion.DO_NOTHING,
                        related_name="+",
                        to="carriers.carrier",
                    ),
                ),
                (
                    "plan",
                    models.ForeignKey(
                        db_constraint=False,
                        on_delete=django.db.models.deletion.DO_NOTHING,
                        related_name="+",
                        to="subscriptions.plan",
                    ),
                ),
            ],
            options={
                "indexes": [models.Index(fields=["hour"], name="reporting_s_hour_f93943_idx")],
            },
        ),
        migrations.CreateModel(
            name="SubscriptionChargeMonthRollup",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("hour", models.DateTimeField()),
                ("currency", models.CharField(max_length=3, null=True)),
                ("kind", models.CharField(max_length=8)),
                ("outcome", models.CharField(max_length=10)),
                ("failure_code", models.CharField(max_length=64)),
                ("charges", models.BigIntegerField()),
                ("amount_minor", models.BigIntegerField(null=True)),
                ("amount_min_minor", models.BigIntegerField(null=True)),
                ("amount_max_minor", models.BigIntegerField(null=True)),
                ("periods_decided", models.BigIntegerField()),
                ("periods_renewed", models.BigIntegerField()),
                (
                    "app",
                    models.ForeignKey(
                        db_constraint=False,
                        on_delete=django.db.models.deletion.DO_NOTHING,
                        related_name="+",
                        to="tenants.app",
                    ),
                ),
                (
                    "carrier",
                    models.ForeignKey(
                        db_constraint=False,
                        on_delete=django.db.models.deletion.DO_NOTHING,
                        related_name="+",
                        to="carriers.carrier",
                    ),
                ),
                (
                    "plan",
                    models.ForeignKey(
                        db_constraint=False,
                        on_delete=django.db.models.deletion.DO_NOTHING,
                        related_name="+",
                        to="subscriptions.plan",
                    ),
                ),
            ],
            options={
                "indexes": [models.Index(fields=["hour"], name="reporting_s_hour_4643b7_idx")],
            },
        ),
        migrations.CreateModel(
            name="SubscriptionChargeRollup",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("hour", models.DateTimeField()),
                ("currency", models.CharField(max_length=3, null=True)),
                ("kind", models.CharField(max_length=8)),
                ("outcome", models.CharField(max_length=10)),
                ("failure_code", models.CharField(max_length=64)),
                ("charges", models.BigIntegerField()),
                ("amount_minor", models.BigIntegerField(null=True)),
                ("amount_min_minor", models.BigIntegerField(null=True)),
                ("amount_max_minor", models.BigIntegerField(null=True)),
                ("periods_decided", models.BigIntegerField()),
                ("periods_renewed", models.BigIntegerField()),
                (
                    "app",
                    models.ForeignKey(
                        db_constraint=False,
                        on_delete=django.db.models.deletion.DO_NOTHING,
                        related_name="+",
                        to="tenants.app",
                    ),
                ),
                (
                    "carrier",
                    models.ForeignKey(
                        db_constraint=False,
                        on_delete=django.db.models.deletion.DO_NOTHING,
                        related_name="+",
                        to="carriers.carrier",
                    ),
                ),
                (
                    "plan",
                    models.ForeignKey(
                        db_constraint=False,
                        on_delete=django.db.models.deletion.DO_NOTHING,
                        related_name="+",
                        to="subscriptions.plan",
                    ),
                ),
            ],
            options={
                "indexes": [models.Index(fields=["hour"], name="reporting_s_hour_cde951_idx")],
            },
        ),
        migrations.RunPython(forward, backward),
    ]
