"""Seeds the catalog's `subscriber-days` dataset (the subscriber base at each midnight, which the dashboard's ARPU
averages over its period)."""

import importlib
from typing import Any

from django.db import migrations

_0017 = importlib.import_module("reporting.migrations.0017_seed_subscription_datasets")
D, M = "dimension", "measure"
# slug: (name, description, kind, source, time field, fields), as in 0004.
DATASETS: dict[str, Any] = {
    "subscriber-days": (
        "Subscribers by day",
        "The subscriptions in each status at the start of each UTC day (its midnight): the subscriber base over time. "
        "Summed over the days of a period and divided by their number, the average subscriber base (ARPU's).",
        "sql",
        "subscriber_days",
        "day",
        [
            *_0017._WHERE,
            ("status", D, "", "string", "", "", "status"),
            ("subscribers", M, "subscriptions", "integer", "", "sum", "subscribers (summed over the days)"),
        ],
    ),
}


def seed_datasets(dataset_model: Any, field_model: Any) -> None:
    """Create this dataset where it does not exist yet (tests call it too, with the real models)."""
    importlib.import_module("reporting.migrations.0004_seed_catalog").seed_datasets(
        dataset_model, field_model, DATASETS
    )


def seed(apps: Any, schema_editor: Any) -> None:
    seed_datasets(apps.get_model("reporting", "Dataset"), apps.get_model("reporting", "DatasetField"))


def unseed(apps: Any, schema_editor: Any) -> None:
    apps.get_model("reporting", "Dataset").objects.filter(slug__in=list(DATASETS)).delete()


class Migration(migrations.Migration):
    dependencies = [("reporting", "0019_subscription_charge_rollups")]
    operations = [migrations.RunPython(seed, unseed)]
