"""Seeds the catalog's subscription datasets, which the dashboard's subscriptions tile reads: the subscriptions,
their status changes (new and churned subscribers) and their charges (renewal success, recurring revenue, ARPU).
"""

import importlib
from typing import Any

from django.db import migrations

D, M = "dimension", "measure"
_WHERE = [
    ("app", D, "", "string", "", "", "app"),
    ("carrier", D, "", "string", "", "", "carrier"),
    ("country", D, "", "string", "", "", "country"),
    ("plan", D, "", "string", "", "", "plan"),
    ("plan_period", D, "", "string", "", "", "plan's period"),
]
# slug: (name, description, kind, source, time field, fields), as in 0004.
DATASETS: dict[str, Any] = {
    "subscriptions": (
        "Subscriptions",
        "Every subscription, by the time it was opened: how many are in each status now (active, past due, "
        "suspended, cancelled, expired, waiting for their opt-in).",
        "sql",
        "subscriptions",
        "created_at",
        [
            *_WHERE,
            ("status", D, "", "string", "", "", "status"),
            ("subscriptions", M, "", "integer", "", "count", "subscriptions"),
            ("players", M, "player", "integer", "", "count_distinct", "distinct players"),
        ],
    ),
    "subscription-changes": (
        "Subscription status changes",
        "Every status change of a subscription, by the time it happened: new subscribers (opt-in confirmed, "
        "first period charged) and churned ones (a billed subscription cancelled or expired).",
        "sql",
        "subscription_changes",
        "created_at",
        [
            *_WHERE,
            ("from_status", D, "", "string", "", "", "from status"),
            ("to_status", D, "", "string", "", "", "to status"),
            ("changes", M, "", "integer", "", "count", "status changes"),
            ("new_subscribers", M, "activated", "integer", "", "sum", "new subscribers"),
            ("churned_subscribers", M, "churned", "integer", "", "sum", "churned subscribers"),
            ("cancelled_subscribers", M, "cancelled", "integer", "", "sum", "cancelled subscribers"),
            ("expired_subscribers", M, "expired", "integer", "", "sum", "expired subscribers"),
        ],
    ),
    "subscription-charges": (
        "Subscription charges",
        "Every charge of a subscription (the opt-in's first period and each renewal attempt), by the time it was "
        "made: recurring revenue (charged amounts, gross of refunds), renewal success rate (periods renewed among "
        "periods decided, each period once however many attempts it took; and per attempt), paying subscribers.",
        "sql",
        "subscription_charges",
        "created_at",
        [
            *_WHERE,
            ("currency", D, "", "string", "", "", "currency"),
            ("kind", D, "", "string", "", "", "kind"),
            ("outcome", D, "", "string", "", "", "outcome"),
            ("failure_code", D, "", "string", "", "", "failure code"),
            ("charges", M, "", "integer", "", "count", "charge attempts"),
            ("charged", M, "succeeded", "integer", "", "sum", "charged"),
            ("failed", M, "failed", "integer", "", "sum", "failed"),
            ("success_rate", M, "charge_succeeded", "ratio", "", "avg", "attempt success rate"),
            ("periods_decided", M, "decided_period", "integer", "", "count_distinct", "periods decided"),
            ("periods_renewed", M, "renewed_period", "integer", "", "count_distinct", "periods renewed"),
            ("revenue_minor", M, "charged_amount_minor", "money", "", "sum", "recurring revenue"),
            ("paying_subscribers", M, "charged_subscription", "integer", "", "count_distinct", "paying subscribers"),
        ],
    ),
}


def seed_datasets(dataset_model: Any, field_model: Any) -> None:
    """Create these datasets where they do not exist yet (tests call it too, with the real models)."""
    importlib.import_module("reporting.migrations.0004_seed_catalog").seed_datasets(
        dataset_model, field_model, DATASETS
    )


def seed(apps: Any, schema_editor: Any) -> None:
    seed_datasets(apps.get_model("reporting", "Dataset"), apps.get_model("reporting", "DatasetField"))


def unseed(apps: Any, schema_editor: Any) -> None:
    apps.get_model("reporting", "Dataset").objects.filter(slug__in=list(DATASETS)).delete()


class Migration(migrations.Migration):
    dependencies = [("reporting", "0016_finance_resolves_differences")]
    operations = [migrations.RunPython(seed, unseed)]
