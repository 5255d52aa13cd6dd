"""Configured carriers and the operator catalogue are separate views; every carrier dropdown offers configured ones."""

from typing import Any

import pytest

from carriers.models import Carrier, NetworkCode, PricePoint
from journal.models import StaffAction
from tests.conftest import StaffClient
from tests.factories import CarrierFactory, CountryFactory

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]


@pytest.fixture
def carriers(db: Any) -> dict[str, Carrier]:
    """Two configured carriers (one active, one being onboarded) and two catalogue operators, as imported."""
    gb = CountryFactory.create()
    au = CountryFactory.create(code="AU", name="Australia", currency="AUD", dialing_code="61")
    live = CarrierFactory.create(slug="live-gb", name="Live Mobile", country=gb)
    onboarding = CarrierFactory.create(
        slug="next-gb", name="Next Telecom", country=gb, is_active=False, protocol="camara", endpoint="https://x.test"
    )
    defence = CarrierFactory.create(
        slug="defence-au", name="Quokka Defence Net", country=au, is_active=False, protocol="sandbox"
    )
    energy = CarrierFactory.create(slug="energy-gb", name="Wombat Energy", country=gb, is_active=False)
    NetworkCode.objects.create(carrier=defence, mcc="505", mnc="99")
    return {"live": live, "onboarding": onboarding, "defence": defence, "energy": energy}


def test_configured_is_active_or_set_up_and_the_rest_is_the_catalogue(carriers: dict[str, Carrier]) -> None:
    assert set(Carrier.objects.configured()) == {carriers["live"], carriers["onboarding"]}
    catalogue = Carrier.objects.catalogue()
    assert carriers["defence"] in catalogue
    assert carriers["energy"] in catalogue
    assert catalogue.count() > 1000  # the seeded MCC/MNC catalogue
    PricePoint.objects.create(carrier=carriers["energy"], code="p", amount_minor=99, currency="GBP")
    assert carriers["energy"] in Carrier.objects.configured()  # a price point is configuration too


def test_the_carrier_list_shows_configured_carriers_and_the_catalogue_the_rest(
    carriers: dict[str, Carrier], staff_client: StaffClient
) -> None:
    operations = staff_client("operations")
    listed = operations.get("/admin/carriers/carrier/").content.decode()
    assert "Live Mobile" in listed
    assert "Next Telecom" in listed
    assert "Quokka Defence Net" not in listed
    assert "Wombat Energy" not in listed
    catalogue = operations.get("/admin/carriers/operatorcatalogue/", {"q": "Wombat"}).content.decode()
    assert "Wombat Energy" in catalogue
    assert "Configure this operator" in catalogue
    assert "Live Mobile" not in operations.get("/admin/carriers/operatorcatalogue/", {"q": "Live"}).content.decode()
    found = operations.get("/admin/carriers/operatorcatalogue/", {"q": "505 99"}).content.decode()
    assert "Quokka Defence Net" in found
    assert "Wombat Energy" not in found


def test_configuring_a_catalogue_operator_moves_it_to_the_carriers_inactive(
    carriers: dict[str, Carrier], staff_client: StaffClient
) -> None:
    operations = staff_client("operations")
    defence = carriers["defence"]
    url = f"/admin/carriers/operatorcatalogue/{defence.pk}/change/"
    form = {"name": defence.name, "slug": defence.slug, "protocol": "sandbox", "endpoint": "", "change_reason": "x"}
    refused = operations.post(url, form)
    assert refused.status_code == 200
    assert "Choose the protocol the carrier speaks" in refused.content.decode()

    form |= {"protocol": "aggregator", "endpoint": "https://dcb.example/api", "new_credentials": '{"merchant_id": "m"}'}
    response = operations.post(url, form)

    assert response.status_code == 302
    assert response["Location"] == f"/admin/carriers/carrier/{defence.pk}/change/"
    defence.refresh_from_db()
    assert (defence.protocol, defence.endpoint, defence.is_active) == ("aggregator", "https://dcb.example/api", False)
    assert defence.credentials == {"merchant_id": "m"}
    assert defence in Carrier.objects.configured()
    assert operations.get(response["Location"]).status_code == 200
    action = StaffAction.objects.get(action="onboard")
    assert (action.object_id, action.reason) == (str(defence.pk), "x")


def test_export_and_settlement_forms_offer_configured_carriers_only(
    carriers: dict[str, Carrier], staff_client: StaffClient
) -> None:
    admin = staff_client("superuser")
    for url in ("/admin/reporting/exportjob/add/", "/admin/reporting/settlementfile/add/"):
        page = admin.get(url).content.decode()
        assert "Live Mobile" in page or "live-gb" in page, url
        assert "Next Telecom" in page or "next-gb" in page, url
        assert "Quokka Defence Net" not in page, url
        assert "defence-au" not in page, url
        assert "Wombat Energy" not in page, url
        assert "energy-gb" not in page, url
    export = admin.get("/admin/reporting/exportjob/add/").content.decode()
    assert "Australia" not in export  # the country dropdown: countries of configured carriers


@pytest.mark.parametrize("url", ["/admin/reporting/settlementfile/", "/admin/payments/carriernotification/"])
def test_carrier_list_filters_offer_configured_carriers_only(
    carriers: dict[str, Carrier], staff_client: StaffClient, url: str
) -> None:
    page = staff_client("superuser").get(url).content.decode()
    assert "Live Mobile" in page
    assert "Quokka Defence Net" not in page
    assert "Wombat Energy" not in page


def test_the_carrier_autocomplete_offers_configured_carriers_only(
    carriers: dict[str, Carrier], staff_client: StaffClient
) -> None:
    response = staff_client("superuser").get(
        "/admin/autocomplete/", {"app_label": "carriers", "model_name": "pricepoint", "field_name": "carrier"}
    )
    assert response.status_code == 200
    assert sorted(row["text"] for row in response.json()["results"]) == ["Live Mobile (GB)", "Next Telecom (GB)"]


def test_the_price_points_country_filter_offers_countries_of_configured_carriers(
    carriers: dict[str, Carrier], staff_client: StaffClient
) -> None:
    japan = CountryFactory.create(code="JP", name="Japan", currency="JPY", dialing_code="81")
    CarrierFactory.create(slug="jp-one", country=japan)
    page = staff_client("superuser").get("/admin/carriers/pricepoint/").content.decode()
    assert "United Kingdom (GB)" in page
    assert "Japan (JP)" in page
    assert "Australia" not in page  # only a catalogue operator there
