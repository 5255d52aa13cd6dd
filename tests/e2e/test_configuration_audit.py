"""Operations change a carrier in the browser: refused without a reason, then saved with one and shown in the
carrier's history with the value before and after."""

from typing import Any

import pytest
from playwright.sync_api import Page, expect

from carriers.models import Carrier
from tests.factories import CarrierFactory

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_carrier_change_needs_a_reason_and_shows_in_its_history(admin_page: Page, live_server: Any) -> None:
    carrier = CarrierFactory.create(name="Vodafone UK")
    admin_page.goto(f"{live_server.url}/admin/carriers/carrier/{carrier.pk}/change/")

    admin_page.get_by_label("Name").fill("Vodafone")
    admin_page.get_by_role("button", name="Save", exact=True).click()
    expect(admin_page.locator(".field-change_reason")).to_contain_text("Give a reason for this change")
    assert Carrier.objects.get(pk=carrier.pk).name == "Vodafone UK"

    admin_page.get_by_label("Reason for this change").fill("Rebrand agreed with the carrier (ticket 4821)")
    admin_page.get_by_role("button", name="Save", exact=True).click()
    expect(admin_page).to_have_url(f"{live_server.url}/admin/carriers/carrier/")
    assert Carrier.objects.get(pk=carrier.pk).name == "Vodafone"

    admin_page.goto(f"{live_server.url}/admin/carriers/carrier/{carrier.pk}/change/")
    admin_page.locator(f'a[href="/admin/carriers/carrier/{carrier.pk}/history/"]').click()  # the page's History
    latest = admin_page.locator("#change-history tbody tr").first
    expect(latest).to_contain_text("Rebrand agreed with the carrier (ticket 4821)")
    expect(latest).to_contain_text("Vodafone UK → Vodafone")
    expect(latest).to_contain_text("ops-e2e")
