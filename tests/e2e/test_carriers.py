"""Operations check a carrier in the browser: its health from the payments it took, and Test connection."""

import re
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from journal.models import StaffAction
from tests.e2e.conftest import Game

# The live server answers from another thread: it sees only what the test commits.
pytestmark = pytest.mark.django_db(transaction=True)


def test_operations_open_the_sandbox_carrier_see_its_calls_and_test_its_connection(
    admin_page: Page, live_server: Any, game: Game
) -> None:
    carrier = game.shop.carrier
    game.pay("order-carrier-health-1")  # one charge: one carrier call, journaled
    admin_page.goto(f"{live_server.url}/admin/carriers/carrier/")
    row = admin_page.get_by_role("row").filter(has_text=carrier.slug)
    expect(row).to_contain_text(re.compile(r"\d+ ms"))  # the call's latency, never "None"
    row.get_by_role("link", name=carrier.name).click()
    expect(admin_page).to_have_url(re.compile(rf"/admin/carriers/carrier/{carrier.pk}/change/"))
    expect(admin_page.get_by_text(re.compile(r"\d+ calls?: \d+ answered \(100\.0 %\)"))).to_be_visible()
    expect(admin_page.locator("figure.carrier-health-chart").first).to_be_visible()

    admin_page.get_by_role("button", name="Test connection").click()

    expect(admin_page.get_by_text(re.compile(r"connection OK: in-process test carrier"))).to_be_visible()
    expect(admin_page.get_by_text("connection failed")).to_have_count(0)
    assert StaffAction.objects.filter(action="test_connection", outcome__startswith="connection OK").count() == 1
