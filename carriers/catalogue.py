"""Reference data: countries (pycountry, babel, phonenumbers) and the MCC/MNC carrier catalogue.

The functions take the model classes as arguments so that data migrations can pass
their historical models and the management commands the current ones.
"""

import csv
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import phonenumbers
import pycountry
from babel.numbers import get_territory_currencies
from django.utils.text import slugify

DATA_DIR = Path(__file__).resolve().parent / "data"
CATALOGUE_FILE = DATA_DIR / "mcc_mnc.csv"
VAT_FILE = DATA_DIR / "vat_rates.csv"
CATALOGUE_COLUMNS = {"mcc", "mnc", "country_iso2", "brand", "operator"}


class CatalogueError(ValueError):
    pass


@dataclass
class ImportReport:
    carriers_created: int = 0
    carriers_renamed: int = 0
    codes_added: int = 0
    codes_moved: list[str] = field(default_factory=list)
    rows_skipped: list[str] = field(default_factory=list)


def seed_countries(country_model: Any, vat_file: Path = VAT_FILE) -> int:
    """Create or update every ISO 3166 country; keeps VAT rates staff have edited."""
    with vat_file.open(newline="", encoding="utf-8") as handle:
        vat = {row["country_iso2"]: Decimal(row["standard_rate_percent"]) for row in csv.DictReader(handle)}
    existing = set(country_model.objects.values_list("code", flat=True))
    new = []
    for entry in pycountry.countries:
        code = entry.alpha_2
        currencies = get_territory_currencies(code, start_date=date.today())
        calling = phonenumbers.country_code_for_region(code)
        values = {
            "name": getattr(entry, "common_name", None) or entry.name,
            "currency": currencies[0] if currencies else "",
            "dialing_code": str(calling) if calling else "",
        }
        if code in existing:
            country_model.objects.filter(code=code).update(**values)
        else:
            new.append(country_model(code=code, vat_rate=vat.get(code, Decimal("0")), **values))
    country_model.objects.bulk_create(new)
    return len(new)


def read_catalogue(path: Path) -> list[dict[str, str]]:
    """Rows of an MCC/MNC CSV (columns mcc, mnc, country_iso2, brand, operator); raises CatalogueError."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = CATALOGUE_COLUMNS - set(reader.fieldnames or [])
            if missing:
                raise CatalogueError(f"{path.name}: missing columns {', '.join(sorted(missing))}")
            return [dict(row) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise CatalogueError(f"{path}: {exc}") from exc


def import_catalogue(
    rows: list[dict[str, str]], *, country_model: Any, carrier_model: Any, network_code_model: Any
) -> ImportReport:
    """Add the operators and MCC/MNC codes of `rows`; never deletes and never activates.

    An operator is one (country, brand or operator name) group of codes. A code already
    known stays with its carrier; inactive carriers take the newer name.
    """
    report = ImportReport()
    countries = set(country_model.objects.values_list("code", flat=True))
    groups: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
    for number, row in enumerate(rows, start=2):
        mcc, mnc = row["mcc"].strip(), row["mnc"].strip()
        country = row["country_iso2"].strip().upper()
        name = (row.get("brand") or "").strip() or (row.get("operator") or "").strip()
        if not (mcc.isdigit() and len(mcc) == 3 and mnc.isdigit() and len(mnc) in (2, 3)):
            report.rows_skipped.append(f"line {number}: bad MCC/MNC {mcc!r}/{mnc!r}")
        elif country not in countries:
            report.rows_skipped.append(f"line {number}: unknown country {country!r}")
        elif not name:
            report.rows_skipped.append(f"line {number}: no brand or operator name")
        else:
            groups[(country, name)].append((mcc, mnc))

    known_codes = {
        (mcc, mnc): carrier_id
        for mcc, mnc, carrier_id in network_code_model.objects.values_list("mcc", "mnc", "carrier_id")
    }
    slugs = set(carrier_model.objects.values_list("slug", flat=True))
    carriers_by_id = {c.pk: c for c in carrier_model.objects.all()}
    new_codes = []
    for (country, name), codes in sorted(groups.items()):
        owner_ids = {known_codes[code] for code in codes if code in known_codes}
        if owner_ids:
            carrier = carriers_by_id[min(owner_ids)]
            if not carrier.is_active and carrier.name != name and len(owner_ids) == 1:
                carrier.name = name
                carrier.save(update_fields=["name"])
                report.carriers_renamed += 1
        else:
            slug = _unique_slug(f"{name}-{country}", codes[0], slugs)
            carrier = carrier_model.objects.create(slug=slug, name=name[:150], country_id=country, is_active=False)
            carriers_by_id[carrier.pk] = carrier
            report.carriers_created += 1
        for code in codes:
            if code not in known_codes:
                new_codes.append(network_code_model(carrier_id=carrier.pk, mcc=code[0], mnc=code[1]))
                known_codes[code] = carrier.pk
            elif known_codes[code] != carrier.pk:
                report.codes_moved.append(f"{code[0]}-{code[1]}: listed under {name!r}, kept on its current carrier")
    network_code_model.objects.bulk_create(new_codes)
    report.codes_added = len(new_codes)
    return report


def _unique_slug(base: str, code: tuple[str, str], taken: set[str]) -> str:
    slug = slugify(base)[:70] or "carrier"
    if slug in taken:
        slug = f"{slug}-{code[0]}{code[1]}"
    taken.add(slug)
    return slug
