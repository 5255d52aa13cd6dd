"""Countries and the shipped MCC/MNC carrier catalogue."""

import io
from decimal import Decimal
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from carriers.catalogue import CATALOGUE_FILE, read_catalogue
from carriers.models import Carrier, Country, NetworkCode

pytestmark = pytest.mark.django_db


def import_carriers(*args: str) -> str:
    out = io.StringIO()
    call_command("import_carriers", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def test_every_iso_country_is_seeded_with_currency_dialing_code_and_vat() -> None:
    import_carriers()  # idempotent: the migration already seeded them
    assert Country.objects.count() == 249
    gb = Country.objects.get(code="GB")
    assert (gb.currency, gb.dialing_code, gb.vat_rate) == ("GBP", "44", Decimal("20.00"))
    assert Country.objects.get(code="JP").currency == "JPY"
    assert Country.objects.get(code="KW").currency == "KWD"


def test_catalogue_seeds_at_least_500_inactive_carriers_in_150_countries() -> None:
    import_carriers()
    catalogue = Carrier.objects.exclude(network_codes=None)
    assert catalogue.count() >= 500
    assert catalogue.values("country").distinct().count() >= 150
    assert not catalogue.filter(is_active=True).exists()
    assert NetworkCode.objects.count() == len(read_catalogue(CATALOGUE_FILE))
    vodafone_uk = NetworkCode.objects.get(mcc="234", mnc="15").carrier
    assert vodafone_uk.country_id == "GB"


def test_import_from_a_newer_file_adds_carriers_and_keeps_configured_ones(tmp_path: Path) -> None:
    import_carriers()
    configured = NetworkCode.objects.get(mcc="234", mnc="15").carrier
    configured.is_active = True
    configured.name = "Vodafone (configured)"
    configured.save()
    newer = tmp_path / "newer.csv"
    newer.write_text(
        "mcc,mnc,country_iso2,brand,operator,status\n"
        "234,15,GB,Vodafone Renamed,Vodafone Ltd,Operational\n"
        "234,99,GB,Brand New Mobile,New Ltd,Operational\n",
        encoding="utf-8",
    )
    out = import_carriers("--file", str(newer))
    assert "1 carriers" in out
    configured.refresh_from_db()
    assert configured.name == "Vodafone (configured)"
    assert configured.is_active
    new = NetworkCode.objects.get(mcc="234", mnc="99").carrier
    assert (new.name, new.is_active) == ("Brand New Mobile", False)


def test_dry_run_changes_nothing(tmp_path: Path) -> None:
    newer = tmp_path / "newer.csv"
    newer.write_text("mcc,mnc,country_iso2,brand,operator\n234,98,GB,Dry Mobile,Dry Ltd\n", encoding="utf-8")
    assert "would be added" in import_carriers("--file", str(newer), "--dry-run")
    assert not NetworkCode.objects.filter(mcc="234", mnc="98").exists()


def test_a_file_without_the_required_columns_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("code,name\n23415,Vodafone\n", encoding="utf-8")
    before = Carrier.objects.count()
    with pytest.raises(CommandError, match="missing columns"):
        import_carriers("--file", str(bad))
    assert Carrier.objects.count() == before


def test_bad_rows_are_reported_and_skipped(tmp_path: Path) -> None:
    odd = tmp_path / "odd.csv"
    odd.write_text(
        "mcc,mnc,country_iso2,brand,operator\n2x4,15,GB,Bad,Bad\n234,97,QQ,Nowhere,Nowhere\n234,96,GB,Good Mobile,\n",
        encoding="utf-8",
    )
    out = import_carriers("--file", str(odd))
    assert "2 rows skipped" in out
    assert NetworkCode.objects.filter(mcc="234", mnc="96").exists()
