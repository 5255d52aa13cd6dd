"""Seeds every ISO 3166 country and the shipped MCC/MNC carrier catalogue (all carriers inactive)."""

from typing import Any

from django.db import migrations

from carriers.catalogue import CATALOGUE_FILE, import_catalogue, read_catalogue, seed_countries


def seed(apps: Any, schema_editor: Any) -> None:
    country = apps.get_model("carriers", "Country")
    seed_countries(country)
    import_catalogue(
        read_catalogue(CATALOGUE_FILE),
        country_model=country,
        carrier_model=apps.get_model("carriers", "Carrier"),
        network_code_model=apps.get_model("carriers", "NetworkCode"),
    )


class Migration(migrations.Migration):
    dependencies = [("carriers", "0001_initial")]
    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
