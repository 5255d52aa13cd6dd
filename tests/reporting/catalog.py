"""The catalog's subscription datasets as the migrations leave them, for tests whose tables start empty (a
transactional test's: its flush empties the catalog the migrations seeded)."""

import importlib

from reporting.models import Dataset, DatasetField

_SEEDED = importlib.import_module("reporting.migrations.0017_seed_subscription_datasets")
_PERIODS = importlib.import_module("reporting.migrations.0019_subscription_charge_rollups")
_DAYS = importlib.import_module("reporting.migrations.0020_seed_subscriber_days")
SUBSCRIPTION_DATASETS = [*_SEEDED.DATASETS, *_DAYS.DATASETS]


def seed_subscription_datasets() -> None:
    _SEEDED.seed_datasets(Dataset, DatasetField)
    _PERIODS.update_datasets(Dataset, DatasetField)
    _DAYS.seed_datasets(Dataset, DatasetField)
