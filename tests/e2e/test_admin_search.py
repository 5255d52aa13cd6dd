"""Support finds a player in a real browser; the payment list on a phone."""

import re
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.conftest import MSISDN
from tests.e2e.conftest import Game

pytestmark = pytest.mark.django_db(transaction=True)


def test_support_finds_a_player_from_a_national_format_number_and_opens_the_timeline(
    admin_page: Page, live_server: Any, game: Game
) -> None:
    game.pay("order-1")
    game.pay("order-2")
    national = "0" + MSISDN.removeprefix("+44")  # 07400123456, as the player reads it out

    admin_page.goto(f"{live_server.url}/admin/payments/payment/")
    admin_page.locator("#searchbar").fill(national)
    admin_page.locator("#searchbar").press("Enter")

    expect(admin_page).to_have_url(re.compile(r"/admin/payments/payment/player/\?msisdn=%2B447400123456$"))
    expect(admin_page.get_by_text("2 payments from this number")).to_be_visible()
    expect(admin_page.get_by_role("heading", name="Interaction timeline")).to_be_visible()
    # The journal's record of the game's calls for this number.
    expect(admin_page.locator("section[aria-label=timeline]")).to_contain_text("POST /api/v1/payments/")


def test_the_command_palette_offers_the_player_of_a_national_format_number(
    admin_page: Page, live_server: Any, game: Game
) -> None:
    game.pay("order-palette-1")
    game.pay("order-palette-2")
    admin_page.goto(f"{live_server.url}/admin/")
    admin_page.keyboard.press("Control+k")
    admin_page.locator("#search-input-command").press_sequentially("0" + MSISDN.removeprefix("+44"))

    admin_page.locator("#command-results a").filter(has_text="Player +447400123456").click()
    expect(admin_page).to_have_url(re.compile(r"/admin/payments/payment/player/\?msisdn=%2B447400123456$"))


def test_the_payment_list_on_a_390_px_phone_shows_amount_and_status(
    admin_page: Page, live_server: Any, game: Game
) -> None:
    paid = game.pay("order-phone")
    admin_page.set_viewport_size({"width": 390, "height": 844})
    admin_page.goto(f"{live_server.url}/admin/payments/payment/")
    row = admin_page.locator("#result_list tbody tr").filter(has_text=paid["id"][:8])
    expect(row.get_by_text("£0.99")).to_be_visible()
    expect(row.get_by_text("succeeded")).to_be_visible()
    assert admin_page.evaluate("document.documentElement.scrollWidth") <= 390
