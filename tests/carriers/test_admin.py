"""Carrier configuration in the admin: credentials are write-only."""

import pytest

from carriers.models import Carrier
from tests.factories import CarrierFactory, PricePointFactory

pytestmark = pytest.mark.django_db


def carrier_form(carrier: Carrier, **changes: str) -> dict[str, str]:
    data = {
        "name": carrier.name,
        "slug": carrier.slug,
        "country": carrier.country_id,
        "protocol": carrier.protocol,
        "endpoint": "https://carrier.example/api",
        "connect_timeout_ms": "2000",
        "read_timeout_ms": "10000",
        "revenue_share": "0.3",
        "max_retries": "5",
        "retry_backoff_seconds": "2",
        "rate_limit_per_second": "50",
        "breaker_failure_threshold": "5",
        "breaker_reset_seconds": "30",
        "is_active": "on",
        "supports_pin": "on",
        "change_reason": "routine check",
    }
    for prefix in ("price_points", "network_codes", "number_prefixes"):
        data |= {f"{prefix}-TOTAL_FORMS": "0", f"{prefix}-INITIAL_FORMS": "0"}
    return data | changes


def test_credentials_are_stored_encrypted_and_never_shown_back(staff_client) -> None:
    admin = staff_client("superuser")
    carrier = CarrierFactory.create()
    url = f"/admin/carriers/carrier/{carrier.pk}/change/"
    response = admin.post(
        url, carrier_form(carrier, new_credentials='{"client_secret": "s3cr3t-value"}', change_reason="new keys")
    )
    assert response.status_code == 302
    from journal.models import StaffAction

    action = StaffAction.objects.get()
    assert (action.action, action.reason) == ("change", "new keys")
    assert action.outcome.endswith("credentials")
    carrier.refresh_from_db()
    assert carrier.credentials == {"client_secret": "s3cr3t-value"}
    assert "s3cr3t-value" not in carrier.credentials_encrypted
    page = admin.get(url).content.decode()
    assert "s3cr3t-value" not in page
    assert "set (hidden)" in page


def test_saving_without_new_credentials_keeps_them_and_bad_json_is_refused(staff_client) -> None:
    admin = staff_client("superuser")
    carrier = CarrierFactory.create()
    carrier.credentials = {"token": "keep-me"}
    carrier.save()
    url = f"/admin/carriers/carrier/{carrier.pk}/change/"
    assert admin.post(url, carrier_form(carrier)).status_code == 302
    carrier.refresh_from_db()
    assert carrier.credentials == {"token": "keep-me"}
    response = admin.post(url, carrier_form(carrier, new_credentials="{not json"))
    assert response.status_code == 200
    assert "Not valid JSON" in response.content.decode()
    carrier.refresh_from_db()
    assert carrier.credentials == {"token": "keep-me"}


def test_whether_the_gateway_deduplicates_reference_codes_is_set_in_the_carrier_admin(staff_client) -> None:
    admin = staff_client("superuser")
    carrier = CarrierFactory.create()
    url = f"/admin/carriers/carrier/{carrier.pk}/change/"
    page = admin.get(url).content.decode()
    assert "Gateway deduplicates referenceCode" in page
    assert "settlement file" in page  # what leaving it off means
    assert not carrier.deduplicates_reference_code
    assert admin.post(url, carrier_form(carrier, deduplicates_reference_code="on")).status_code == 302
    carrier.refresh_from_db()
    assert carrier.deduplicates_reference_code


def test_the_monthly_spend_cap_is_typed_in_major_units_of_the_carriers_currency(staff_client) -> None:
    admin = staff_client("superuser")
    carrier = CarrierFactory.create()
    assert carrier.country.currency == "GBP"
    url = f"/admin/carriers/carrier/{carrier.pk}/change/"
    assert admin.post(url, carrier_form(carrier, monthly_spend_cap="30.00")).status_code == 302
    carrier.refresh_from_db()
    assert carrier.monthly_spend_cap_minor == 3000
    assert carrier.history.first().monthly_spend_cap_minor == 3000
    assert 'value="30.00"' in admin.get(url).content.decode()
    refused = admin.post(url, carrier_form(carrier, monthly_spend_cap="30.001"))
    assert refused.status_code == 200
    carrier.refresh_from_db()
    assert carrier.monthly_spend_cap_minor == 3000
    assert admin.post(url, carrier_form(carrier, monthly_spend_cap="")).status_code == 302
    carrier.refresh_from_db()
    assert carrier.monthly_spend_cap_minor is None


@pytest.mark.parametrize(
    "path",
    [
        "/admin/carriers/carrier/",
        "/admin/carriers/operatorcatalogue/",
        "/admin/carriers/country/",
        "/admin/carriers/pricepoint/",
        "/admin/payments/payment/",
        "/admin/tenants/app/",
        "/admin/tenants/apikey/",
        "/admin/journal/staffaction/",
        "/admin/payments/idempotencyrecord/",
        "/admin/payments/webhookdelivery/",
        "/admin/payments/carriernotification/",
        "/admin/payments/outboxmessage/",
    ],
)
def test_admin_changelists_load_with_search(staff_client, path: str) -> None:
    admin = staff_client("superuser")
    assert admin.get(path, {"q": "x"}).status_code == 200


def test_deactivating_a_carrier_is_recorded(staff_client) -> None:
    admin = staff_client("superuser")
    from journal.models import StaffAction

    carrier = CarrierFactory.create()
    admin.post(
        "/admin/carriers/carrier/",
        {"action": "deactivate", "_selected_action": [carrier.pk], "reason": "carrier asked to pause billing"},
    )
    carrier.refresh_from_db()
    assert not carrier.is_active
    assert StaffAction.objects.get().action == "deactivate"


def test_a_carrier_without_an_active_price_point_is_not_activated_and_the_refusal_says_why(staff_client) -> None:
    from journal.models import StaffAction

    admin = staff_client("operations")
    bare = CarrierFactory.create(is_active=False, protocol="parlayx", endpoint="https://carrier.example/api")
    ready = CarrierFactory.create(is_active=False)
    PricePointFactory.create(carrier=ready)
    PricePointFactory.create(carrier=bare, is_active=False)  # a price point, but not one it offers
    response = admin.post(
        "/admin/carriers/carrier/",
        {"action": "activate", "_selected_action": [bare.pk, ready.pk], "reason": "launch day"},
        follow=True,
    )
    page = response.content.decode()
    assert f"{bare.name} cannot be activated: it has no active price point" in page
    assert "1 carrier(s) activated." in page
    bare.refresh_from_db()
    ready.refresh_from_db()
    assert (bare.is_active, ready.is_active) == (False, True)
    outcomes = dict(StaffAction.objects.values_list("object_id", "outcome"))
    assert outcomes[str(ready.pk)] == "done"
    assert outcomes[str(bare.pk)].startswith("refused: ")


def test_ticking_active_on_a_carrier_that_cannot_take_payments_is_refused_on_the_field(staff_client) -> None:
    admin = staff_client("operations")
    carrier = CarrierFactory.create(is_active=False, protocol="parlayx", endpoint="https://carrier.example/api")
    url = f"/admin/carriers/carrier/{carrier.pk}/change/"
    response = admin.post(url, carrier_form(carrier, endpoint=""))
    assert response.status_code == 200
    page = response.content.decode()
    assert "Not yet: it has no endpoint" in page
    assert "Not yet: it has no active price point" in page
    carrier.refresh_from_db()
    assert not carrier.is_active
    PricePointFactory.create(carrier=carrier)
    assert admin.post(url, carrier_form(carrier)).status_code == 302  # the endpoint given, a price point there
    carrier.refresh_from_db()
    assert carrier.is_active


def test_an_active_carrier_keeps_its_endpoint_and_a_bad_url_is_said_once(staff_client) -> None:
    admin = staff_client("operations")
    carrier = CarrierFactory.create(protocol="parlayx", endpoint="https://carrier.example/api")
    PricePointFactory.create(carrier=carrier)
    url = f"/admin/carriers/carrier/{carrier.pk}/change/"
    cleared = admin.post(url, carrier_form(carrier, endpoint="")).content.decode()
    assert "An active carrier needs one: it has no endpoint" in cleared
    bad = admin.post(url, carrier_form(carrier, endpoint="not a url at all")).content.decode()
    assert "Enter a valid URL." in bad
    assert "no endpoint" not in bad
    carrier.refresh_from_db()
    assert (carrier.endpoint, carrier.is_active) == ("https://carrier.example/api", True)
