"""Operations open a subscription in the browser, follow its charge to its payment, and cancel it with a reason."""

from collections.abc import Callable
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from journal.models import StaffAction
from sandbox.adapter import TEST_PIN
from subscriptions.models import Subscription
from tests.conftest import MSISDN, Shop
from tests.e2e.conftest import Game
from tests.subscriptions.conftest import make_plan

# The live server answers from another thread: it sees only what the test commits.
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def subscriber(transactional_db: Any, live_server: Any, make_shop: Callable[..., Shop]) -> Game:
    """A game selling the weekly plan `vip-weekly` on a carrier that takes subscriptions."""
    shop = make_shop(supports_subscriptions=True)
    make_plan(shop)
    return Game(shop=shop, base_url=live_server.url)


def active_subscription(game: Game) -> Subscription:
    """Opted in and confirmed through the API over HTTP, as a game backend does."""
    body = {"user_ref": "player-1", "msisdn": MSISDN, "plan": "vip-weekly"}
    created = game.request("POST", "/api/v1/subscriptions/", json=body, headers={"Idempotency-Key": "sub-e2e"})
    assert created.status_code == 201, created.text
    subscription_id = created.json()["id"]
    confirmed = game.request("POST", f"/api/v1/subscriptions/{subscription_id}/confirm/", json={"pin": TEST_PIN})
    assert confirmed.status_code in (200, 202), confirmed.text  # 200 when the PIN was checked within the wait
    subscription = Subscription.objects.get(public_id=subscription_id)
    assert subscription.status == "active"
    return subscription


def test_operations_cancel_a_subscription_from_its_page(admin_page: Page, live_server: Any, subscriber: Game) -> None:
    subscription = active_subscription(subscriber)
    admin_page.goto(f"{live_server.url}/admin/subscriptions/subscription/")
    admin_page.get_by_role("link", name=str(subscription.public_id)).click()

    header = admin_page.locator(".pp-payment-header")
    expect(header).to_contain_text("VIP pass")
    expect(header).to_contain_text("Active")
    expect(header).to_contain_text("entitled until")
    opt_in = subscription.charges.get().payment_id
    expect(admin_page.locator(f'.pp-periods a[href="/admin/payments/payment/{opt_in}/change/"]')).to_be_visible()

    cancel = admin_page.locator("form.pp-cancel")
    cancel.get_by_label("now (entitlement ends now)").check()
    cancel.get_by_role("button", name="Cancel subscription").click()
    # The browser asks for the reason first: nothing is sent without one.
    expect(admin_page).to_have_url(f"{live_server.url}/admin/subscriptions/subscription/{subscription.pk}/change/")
    assert Subscription.objects.get(pk=subscription.pk).status == "active"

    cancel.get_by_label("Reason").fill("Player asked by phone (ticket 4821)")
    cancel.get_by_role("button", name="Cancel subscription").click()
    expect(
        admin_page.get_by_text("Cancelled now: the player is no longer entitled and is not charged again.")
    ).to_be_visible()
    expect(admin_page.locator(".pp-payment-header")).to_contain_text("Cancelled")
    expect(admin_page.locator(".pp-status-changes")).to_contain_text("staff:ops-e2e")
    expect(admin_page.locator(".pp-status-changes")).to_contain_text("Player asked by phone (ticket 4821)")
    expect(admin_page.locator("form.pp-cancel")).to_have_count(0)

    subscription.refresh_from_db()
    assert (subscription.status, subscription.cancel_reason) == ("cancelled", "Player asked by phone (ticket 4821)")
    assert StaffAction.objects.get(action="cancel_subscription").user.get_username() == "ops-e2e"
