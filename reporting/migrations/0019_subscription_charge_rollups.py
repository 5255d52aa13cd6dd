"""Subscription-charge rollups (reporting.services.rollups, kind `subscription_charges`), and the renewal success
per period counted on each period's first attempt (the catalog's `period_decided` and `period_renewed`, summed)
instead of distinct periods, so that the rollups can keep it.

Where the payment rollups are built already, the charges' are left to the refresh, which builds them from the first
charge's hour in its bounded steps (`RollupState.kinds_until`) while the payments' keep theirs; until they reach
the others, their queries read the charges for the hours not built yet.
"""

import importlib
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


def update_datasets(dataset_model: Any, field_model: Any, *, before: bool = False) -> None:
    """The seeded `subscription-charges` dataset as this migration leaves it (`before`: as 0017 seeded it; tests
    call it too, with the real models)."""
    for name, source, aggregation in BEFORE if before else PERIODS:
        field_model.objects.filter(dataset__slug="subscription-charges", name=name).update(
            source=source, aggregation=aggregation
        )
    old = importlib.import_module("reporting.migrations.0017_seed_subscription_datasets").DATASETS
    description = old["subscription-charges"][1] if before else DESCRIPTION
    dataset_model.objects.filter(slug="subscription-charges").update(description=description)


def forward(apps: Any, schema_editor: Any) -> None:
    update_datasets(apps.get_model("reporting", "Dataset"), apps.get_model("reporting", "DatasetField"))
    state = apps.get_model("reporting", "RollupState").objects.filter(pk=1).first()
    if state is not None:  # built already: the charges' rollups start from their first hour
        with schema_editor.connection.cursor() as cursor:
            cursor.execute("SELECT date_trunc('hour', MIN(created_at), 'UTC') FROM subscriptions_subscriptioncharge")
            first = cursor.fetchone()[0]
        state.kinds_until = {"subscription_charges": min(first or state.covered_until, state.covered_until).isoformat()}
        state.save(update_fields=["kinds_until"])


def backward(apps: Any, schema_editor: Any) -> None:
    update_datasets(apps.get_model("reporting", "Dataset"), apps.get_model("reporting", "DatasetField"), before=True)


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
        migrations.AddField(
            model_name="rollupstate", name="kinds_until", field=models.JSONField(blank=True, default=dict)
        ),
        migrations.RunPython(forward, backward),
    ]
