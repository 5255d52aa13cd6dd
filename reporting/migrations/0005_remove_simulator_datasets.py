"""Removes the datasets that point at the sandbox's simulators.

Earlier versions of 0004 seeded `fx-rates` and `aggregator-balance` against PUBLIC_BASE_URL +
/simulators/..., so every database (production's included) fetched from demo endpoints that are
off there. Demo datasets now come from the sandbox's `seed_demo`; a deployment adds its own FX
provider in the admin. A dataset staff already pointed elsewhere (or any other dataset) is kept; alert rules on a removed
dataset go with it (they could only ever watch demo figures).
"""

from typing import Any

from django.db import migrations

# What the old 0004 wrote: these two datasets, at this server's own simulator paths.
SEEDED = {"fx-rates": "/simulators/fx/rates", "aggregator-balance": "/simulators/aggregator/v1/balance"}


def remove(apps: Any, schema_editor: Any) -> None:
    dataset_model = apps.get_model("reporting", "Dataset")
    demo = dataset_model.objects.none()
    for slug, path in SEEDED.items():
        demo |= dataset_model.objects.filter(slug=slug, api_url__endswith=path)
    apps.get_model("reporting", "AlertRule").objects.filter(dataset__in=demo).delete()
    demo.delete()


class Migration(migrations.Migration):
    dependencies = [("reporting", "0004_seed_catalog")]
    operations = [migrations.RunPython(remove, migrations.RunPython.noop)]
