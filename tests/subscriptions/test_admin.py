"""The subscriptions' admin per staff role: plans and offers configured by operations with a reason, the
subscriptions list (filters, search), the subscription page and its cancellation, the player page's section."""

from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django.utils.html import escape

from journal.models import StaffAction
from subscriptions.models import Plan, PlanOffer, Subscription, SubscriptionNotice, SubscriptionStatus
from subscriptions.periods import Period
from tests.conftest import MSISDN, StaffClient
from tests.factories import CarrierFactory, PricePointFactory
from tests.subscriptions.conftest import Subs, make_plan

pytestmark = pytest.mark.django_db
LIST = "/admin/subscriptions/subscription/"
PLANS = "/admin/subscriptions/plan/"
OFFERS = "/admin/subscriptions/planoffer/"
ROLES = ("support", "finance", "operations", "superuser")


def page(subscription: Subscription) -> str:
    return f"{LIST}{subscription.pk}/change/"


def cancel(client: Client, subscription: Subscription, **form: str) -> Any:
    return client.post(f"{LIST}{subscription.pk}/cancel/", form)


def listed(client: Client, **params: Any) -> set[str]:
    response = client.get(LIST, params)
    assert response.status_code == 200
    text = response.content.decode()
    return {str(s.public_id) for s in Subscription.objects.all() if str(s.public_id) in text}


def other_subscription(subs: Subs, *, status: str = SubscriptionStatus.ACTIVE, **fields: Any) -> Subscription:
    """A subscription written as the engine leaves it, on another carrier and plan unless told."""
    carrier = fields.pop("carrier", None) or CarrierFactory.create(name="Other Mobile", supports_subscriptions=True)
    code = f"gold-{Plan.objects.count()}"
    plan = Plan.objects.create(app=subs.shop.app, code=code, name="Gold", period=Period.MONTHLY)
    price_point = PricePointFactory.create(carrier=carrier, code=code)
    offer = PlanOffer.objects.create(plan=plan, carrier=carrier, price_point=price_point)
    values = {"user_ref": "player-9", "msisdn": "+447400999999", **fields}
    return Subscription.objects.create(
        app=subs.shop.app,
        carrier=carrier,
        plan=plan,
        offer=offer,
        price_point=price_point,
        amount_minor=price_point.amount_minor,
        currency=price_point.currency,
        status=status,
        **values,
    )


def test_every_role_reads_the_subscriptions_plans_and_offers(subs: Subs, staff_client: StaffClient) -> None:
    subscription = subs.active()
    for role in ROLES:
        client = staff_client(role)
        for url in (LIST, page(subscription), PLANS, f"{PLANS}{subs.plan.pk}/change/", OFFERS):
            assert client.get(url).status_code == 200, (role, url)


def test_only_operations_may_change_a_plan_and_the_change_keeps_its_reason(
    subs: Subs, staff_client: StaffClient
) -> None:
    url = f"{PLANS}{subs.plan.pk}/change/"
    form = {
        "app": subs.shop.app.pk,
        "code": "vip-weekly",
        "name": "VIP pass+",
        "period": "weekly",
        "trial_days": 0,
        "is_active": "on",
        "offers-TOTAL_FORMS": 0,
        "offers-INITIAL_FORMS": 0,
    }
    for role in ("support", "finance"):
        page_text = staff_client(role).get(url).content.decode()
        assert "Reason for this change" not in page_text  # read-only: no form to give one in
        assert staff_client(role).post(url, {**form, "change_reason": "rename"}).status_code == 403, role
    assert Plan.objects.get(pk=subs.plan.pk).name == "VIP pass"

    operations = staff_client("operations")
    refused = operations.post(url, form)
    assert refused.status_code == 200
    assert "Give a reason for this change" in refused.content.decode()
    assert Plan.objects.get(pk=subs.plan.pk).name == "VIP pass"

    saved = operations.post(url, {**form, "change_reason": "marketing renamed it (ticket 77)"})
    assert saved.status_code == 302, saved.content.decode()[:2000]
    plan = Plan.objects.get(pk=subs.plan.pk)
    assert plan.name == "VIP pass+"
    latest = plan.history.latest()
    assert (latest.history_change_reason, latest.history_user.username) == (
        "marketing renamed it (ticket 77)",
        "operations",
    )
    assert StaffAction.objects.filter(object_type="plan", reason="marketing renamed it (ticket 77)").exists()
    changes = staff_client("finance").get("/admin/configuration-changes/", {"model": "subscriptions.plan"})
    assert "marketing renamed it (ticket 77)" in changes.content.decode()  # finance reads it, with the others


def test_an_offer_takes_its_own_carriers_prices_and_a_first_period_discount_only(
    subs: Subs, staff_client: StaffClient
) -> None:
    shop = subs.shop
    plan, _ = make_plan(shop, code="vip-daily", period=Period.DAILY)
    PlanOffer.objects.filter(plan=plan).delete()
    elsewhere = PricePointFactory.create(code="elsewhere")  # another carrier's
    dearer = PricePointFactory.create(carrier=shop.carrier, code="dearer", amount_minor=499)
    form = {"plan": plan.pk, "carrier": shop.carrier.pk, "change_reason": "launch in the UK"}
    operations = staff_client("operations")

    wrong_carrier = operations.post(f"{OFFERS}add/", {**form, "price_point": elsewhere.pk})
    assert "Choose a price point of this offer&#x27;s carrier." in wrong_carrier.content.decode()
    no_discount = operations.post(
        f"{OFFERS}add/", {**form, "price_point": shop.price_point.pk, "first_period_price_point": dearer.pk}
    )
    assert "A first-period price is a discount" in no_discount.content.decode()
    assert not PlanOffer.objects.filter(plan=plan).exists()

    saved = operations.post(
        f"{OFFERS}add/", {**form, "price_point": dearer.pk, "first_period_price_point": shop.price_point.pk}
    )
    assert saved.status_code == 302
    offer = PlanOffer.objects.get(plan=plan)
    assert offer.history.latest().history_change_reason == "launch in the UK"
    listing = operations.get(OFFERS).content.decode()
    assert "£0.99 the first day, then £4.99 per day" in listing  # major units, with the currency
    assert staff_client("finance").post(f"{OFFERS}add/", form).status_code == 403


def test_the_subscription_page_shows_status_entitlement_periods_charges_and_history(
    subs: Subs, staff_client: StaffClient
) -> None:
    subscription = subs.active()
    assert subscription.current_period_end is not None
    subs.renew(subscription.current_period_end)
    subscription.refresh_from_db()
    opt_in, renewal = (charge.payment_id for charge in subscription.charges.order_by("id"))
    text = staff_client("support").get(page(subscription)).content.decode()
    assert "VIP pass" in text
    assert "£0.99 per week" in text
    assert f"entitled until {subscription.entitled_until:%Y-%m-%d %H:%M:%S} UTC" in text
    assert "+44740*****56" in text
    assert MSISDN not in text
    for payment_id in (opt_in, renewal):
        assert f'href="/admin/payments/payment/{payment_id}/change/"' in text
    assert f"/admin/payments/payment/{renewal}/refund/" not in text  # support may not refund
    assert "pending_opt_in → active" in text
    assert "Cancel subscription" not in text

    operations = staff_client("operations").get(page(subscription)).content.decode()
    assert f'href="/admin/payments/payment/{renewal}/refund/"' in operations  # refund a renewal: its payment's
    assert "Cancel subscription" in operations
    assert "+447400123456" in operations


@pytest.mark.parametrize("role", ["support", "finance"])
def test_support_and_finance_may_not_cancel(subs: Subs, staff_client: StaffClient, role: str) -> None:
    subscription = subs.active()
    response = cancel(staff_client(role), subscription, when="now", reason="player asked")
    assert response.status_code == 403
    subscription.refresh_from_db()
    assert (subscription.status, subscription.cancel_reason) == ("active", "")
    assert not StaffAction.objects.filter(action="cancel_subscription").exists()


def test_operations_cancel_now_with_a_reason_recorded_with_the_actor(subs: Subs, staff_client: StaffClient) -> None:
    subscription = subs.active()
    before = timezone.now()
    response = cancel(staff_client("operations"), subscription, when="now", reason="player asked (ticket 12)")
    assert (response.status_code, response["Location"]) == (302, page(subscription))
    subscription.refresh_from_db()
    assert subscription.status == SubscriptionStatus.CANCELLED
    assert subscription.entitled_until is not None
    assert before <= subscription.entitled_until <= timezone.now()
    assert subscription.next_charge_at is None
    change = subscription.history.latest("id")
    assert (change.from_status, change.to_status, change.actor, change.reason) == (
        "active",
        "cancelled",
        "staff:operations",
        "cancelled: player asked (ticket 12)",
    )
    action = StaffAction.objects.get(action="cancel_subscription")
    assert (action.user.username, action.object_id, action.reason) == (
        "operations",
        str(subscription.public_id),
        "player asked (ticket 12)",
    )
    text = staff_client("operations").get(page(subscription)).content.decode()
    assert "staff:operations" in text
    assert "player asked (ticket 12)" in text
    assert "Cancel subscription" not in text  # nothing left to cancel


def test_cancelling_at_the_period_end_keeps_the_entitlement_until_then(subs: Subs, staff_client: StaffClient) -> None:
    subscription = subs.active()
    entitled_until = subscription.entitled_until
    response = cancel(staff_client("operations"), subscription, when="period_end", reason="moving abroad")
    assert response.status_code == 302
    subscription.refresh_from_db()
    assert (subscription.status, subscription.cancel_at_period_end, subscription.entitled_until) == (
        "active",
        True,
        entitled_until,
    )
    assert subscription.cancel_reason == "moving abroad"
    assert StaffAction.objects.get(action="cancel_subscription").outcome.startswith("cancels at the end of the period")
    text = staff_client("support").get(page(subscription)).content.decode()
    assert "cancels at the end of this period" in text
    assert "moving abroad" in text


@pytest.mark.parametrize("form", [{"when": "now"}, {"when": "now", "reason": "   "}, {"reason": "x", "when": "soon"}])
def test_a_cancellation_without_a_reason_or_a_valid_choice_changes_nothing(
    subs: Subs, staff_client: StaffClient, form: dict[str, str]
) -> None:
    subscription = subs.active()
    client = staff_client("operations")
    response = cancel(client, subscription, **form)
    assert (response.status_code, response["Location"]) == (302, page(subscription))
    subscription.refresh_from_db()
    assert (subscription.status, subscription.cancel_at_period_end, subscription.cancel_reason) == ("active", False, "")
    assert subscription.history.count() == 2  # created, activated
    assert not StaffAction.objects.filter(action="cancel_subscription").exists()
    assert "Give a reason for the cancellation" in client.get(page(subscription)).content.decode()


def test_a_cancelled_subscription_is_not_cancelled_again(subs: Subs, staff_client: StaffClient) -> None:
    subscription = other_subscription(subs, status=SubscriptionStatus.CANCELLED)
    client = staff_client("operations")
    response = cancel(client, subscription, when="now", reason="again")
    assert response.status_code == 302
    assert "Not cancelled: The subscription is already cancelled." in client.get(page(subscription)).content.decode()
    assert subscription.history.count() == 0
    assert StaffAction.objects.get(action="cancel_subscription").outcome.startswith("refused")


def test_malformed_ids_are_not_found(staff_client: StaffClient) -> None:
    operations = staff_client("operations")
    assert operations.post(f"{LIST}999999/cancel/", {"when": "now", "reason": "x"}).status_code == 404
    assert operations.get(f"{LIST}not-a-number/change/").status_code in (302, 404)


def test_the_list_filters_by_status_plan_and_carrier(subs: Subs, staff_client: StaffClient) -> None:
    active = subs.active()
    other = other_subscription(subs, status=SubscriptionStatus.PAST_DUE)
    support = staff_client("support")
    both = {str(active.public_id), str(other.public_id)}
    assert listed(support) == both
    assert listed(support, status__exact="past_due") == {str(other.public_id)}
    assert listed(support, status__exact="active") == {str(active.public_id)}
    assert listed(support, plan__id__exact=subs.plan.pk) == {str(active.public_id)}
    assert listed(support, carrier__id__exact=other.carrier_id) == {str(other.public_id)}


def test_the_search_reads_ids_prefixes_numbers_in_any_format_and_user_refs(
    subs: Subs, staff_client: StaffClient
) -> None:
    subscription = subs.active()
    other = other_subscription(subs, user_ref="player-9", msisdn="+447722836885")
    support = staff_client("support")
    opt_in = subscription.charges.get().payment
    assert opt_in is not None
    for term in (
        str(subscription.public_id),
        str(subscription.public_id).replace("-", "").upper(),
        str(subscription.public_id)[:13],
        "player-1",
        "sub-1",  # the app's Idempotency-Key
        "07400123456",
        "+44 7400 123456",
        str(opt_in.public_id),  # one of its payments
    ):
        response = support.get(LIST, {"q": term})
        assert (response.status_code, response.get("Location")) == (302, page(subscription)), term
    assert listed(support, q="player-9", status__exact="past_due") == set()
    assert listed(support, q="player-9", status__exact="active") == {str(other.public_id)}
    assert listed(support, q="nobody") == set()
    assert listed(support, q="'; DROP TABLE x; --") == set()


def test_the_list_masks_numbers_but_for_operations_and_runs_the_same_queries_for_more_rows(
    subs: Subs, staff_client: StaffClient
) -> None:
    subs.active()
    support = staff_client("support")
    text = support.get(LIST).content.decode()
    assert "+44740*****56" in text
    assert MSISDN not in text
    assert MSISDN in staff_client("operations").get(LIST).content.decode()

    with CaptureQueriesContext(connection) as one:
        support.get(LIST)
    carrier = CarrierFactory.create(supports_subscriptions=True)
    for n in range(5):
        other_subscription(subs, carrier=carrier, user_ref=f"p{n}")
    with CaptureQueriesContext(connection) as six:
        assert support.get(LIST).status_code == 200
    assert len(six.captured_queries) <= len(one.captured_queries) + 2  # a filter's choices, not a query per row
    assert not any(
        "COUNT(" in q["sql"].upper() for q in six.captured_queries if "subscriptions_subscription" in q["sql"]
    )


def test_the_player_page_lists_the_players_subscriptions(subs: Subs, staff_client: StaffClient) -> None:
    subscription = subs.active()
    other = other_subscription(subs, user_ref="player-1", msisdn="+447722836885")
    player = f"/admin/payments/payment/player/?{urlencode({'app': subs.shop.app.pk, 'user_ref': 'player-1'})}"
    text = staff_client("support").get(player).content.decode()
    assert 'aria-label="Subscriptions"' in text
    assert f'href="{page(subscription)}"' in text
    assert f'href="{page(other)}"' in text
    assert "entitled until" in text
    number = f"/admin/payments/payment/player/?{urlencode({'msisdn': MSISDN})}"
    by_number = staff_client("support").get(number).content.decode()
    assert f'href="{page(subscription)}"' in by_number
    assert f'href="{page(other)}"' not in by_number


def test_the_sidebar_offers_subscriptions_to_every_role(subs: Subs, staff_client: StaffClient) -> None:
    for role in ROLES:
        text = staff_client(role).get("/admin/").content.decode()
        assert f'href="{LIST}"' in text, role
        assert f'href="{PLANS}"' in text, role


def test_malformed_filters_and_searches_never_fail(subs: Subs, staff_client: StaffClient) -> None:
    subs.active()
    support = staff_client("support")
    for params in (
        {"status__exact": "bogus"},
        {"plan__id__exact": "abc"},
        {"carrier__id__exact": "9" * 30},
        {"q": "x" * 5000},
        {"q": "+" + "9" * 40},
        {"q": "0123456789abcdef0123456789abcdefff"},
    ):
        response = support.get(LIST, params)
        assert response.status_code in (200, 302), params
    for query in ("q=%00", "status__exact=%00", "app__id__exact=1%00"):
        assert support.get(f"{LIST}?{query}").status_code == 400, query  # text no column can hold
    assert support.get(f"{LIST}?q=player-1%ED%A0%80").status_code == 200  # not UTF-8: read with U+FFFD
    assert support.get(f"{LIST}1/cancel/").status_code == 403  # support may not cancel at all
    subscription = Subscription.objects.get()
    assert staff_client("operations").get(f"{LIST}{subscription.pk}/cancel/").status_code == 405  # a GET never cancels
    subscription.refresh_from_db()
    assert subscription.status == SubscriptionStatus.ACTIVE


def test_the_carrier_and_price_point_pickers_answer_whom_may_use_them(subs: Subs, staff_client: StaffClient) -> None:
    picker = "/admin/autocomplete/"
    carrier = {"app_label": "subscriptions", "model_name": "subscription", "field_name": "carrier", "term": "Test"}
    found = staff_client("support").get(picker, carrier)
    assert found.status_code == 200
    assert str(subs.shop.carrier.pk) in {row["id"] for row in found.json()["results"]}
    price_point = {"app_label": "subscriptions", "model_name": "planoffer", "field_name": "price_point", "term": ""}
    offered = staff_client("operations").get(picker, price_point)
    assert offered.status_code == 200
    assert str(subs.shop.price_point.pk) in {row["id"] for row in offered.json()["results"]}


def test_the_subscription_page_shows_the_agreed_price_and_the_periods_missed(
    subs: Subs, staff_client: StaffClient
) -> None:
    subscription = subs.active()
    subs.offer.price_point = PricePointFactory.create(carrier=subs.shop.carrier, code="gems-200", amount_minor=199)
    subs.offer.save(update_fields=["price_point"])
    assert subscription.anchor_at is not None
    subs.renew(subscription.anchor_at + timedelta(days=15))  # week 1 went by without the engine: missed, week 2 charged

    response = staff_client("support").get(page(subscription))

    assert response.status_code == 200
    text = response.content.decode()
    assert "£0.99 per week" in text  # what the player agreed to, not the offer's £1.99 now
    assert "£1.99" not in text
    assert text.count(">missed<") == 1


def test_a_plan_s_period_and_an_offer_s_carrier_cannot_be_changed_under_its_subscriptions(
    subs: Subs, staff_client: StaffClient
) -> None:
    subs.active()
    operations = staff_client("operations")
    url = f"{PLANS}{subs.plan.pk}/change/"
    form = {
        "app": subs.shop.app.pk,
        "code": "another-code",
        "name": "VIP pass",
        "period": "daily",
        "trial_days": 7,
        "is_active": "on",
        "offers-TOTAL_FORMS": 0,
        "offers-INITIAL_FORMS": 0,
        "change_reason": "try to move it",
    }
    assert operations.post(url, form).status_code == 302
    plan = Plan.objects.get(pk=subs.plan.pk)
    assert (plan.code, plan.period, plan.trial_days) == (subs.plan.code, subs.plan.period, 0)  # read-only there

    offer = PlanOffer.objects.get(plan=subs.plan)
    elsewhere = CarrierFactory.create(name="Elsewhere Mobile", supports_subscriptions=True)
    offer.carrier = elsewhere
    with pytest.raises(ValidationError, match="An offer stays on its plan and carrier"):
        offer.full_clean()
    moved = {"carrier": elsewhere.pk, "price_point": offer.price_point_id, "change_reason": "try to move it"}
    assert operations.post(f"{OFFERS}{offer.pk}/change/", moved).status_code == 302
    assert PlanOffer.objects.get(pk=offer.pk).carrier_id == subs.shop.carrier.pk


def test_a_long_subscription_s_page_lists_its_latest_periods_and_says_the_rest_are_left_out(
    subs: Subs, staff_client: StaffClient
) -> None:
    from subscriptions.models import SubscriptionCharge
    from subscriptions.selectors import SHOWN_PERIODS

    subscription = subs.active()
    SubscriptionCharge.objects.bulk_create(
        SubscriptionCharge(
            subscription=subscription,
            kind=SubscriptionCharge.Kind.RENEWAL,
            period_index=index,
            outcome=SubscriptionCharge.Outcome.MISSED,
        )
        for index in range(1, SHOWN_PERIODS + 7)
    )
    text = staff_client("support").get(page(subscription)).content.decode()
    shown = {index for index in range(SHOWN_PERIODS + 7) if f'data-period="{index}"' in text}
    assert shown == set(range(7, SHOWN_PERIODS + 7))
    assert "the earlier ones (#0 to #6) are not listed here" in text
    assert "are not listed here" not in staff_client("support").get(page(subs.active("sub-2"))).content.decode()


def test_a_player_with_more_subscriptions_than_the_page_lists_is_pointed_to_the_list(
    subs: Subs, staff_client: StaffClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from subscriptions import admin as subscriptions_admin

    monkeypatch.setattr(subscriptions_admin, "PLAYER_SUBSCRIPTIONS", 2)
    made = [other_subscription(subs, user_ref="player-1", msisdn="+447722836885") for _ in range(3)]
    player = f"/admin/payments/payment/player/?{urlencode({'app': subs.shop.app.pk, 'user_ref': 'player-1'})}"
    text = staff_client("support").get(player).content.decode()
    assert [s for s in made if f'href="{page(s)}"' in text] == made[1:]  # the newest two
    assert "The newest 2 are listed" in text
    more = f'href="{LIST}?{urlencode({"q": "player-1"})}"'
    assert more in text
    listing = staff_client("support").get(f"{LIST}?{urlencode({'q': 'player-1'})}").content.decode()
    assert all(str(s.public_id) in listing for s in made)
    monkeypatch.setattr(subscriptions_admin, "PLAYER_SUBSCRIPTIONS", 3)
    assert "The newest" not in staff_client("support").get(player).content.decode()


def test_the_subscription_page_shows_the_reminders_not_sent_and_why(subs: Subs, staff_client: StaffClient) -> None:
    plan, offer = make_plan(subs.shop, period=Period.MONTHLY, code="vip-monthly")
    monthly = Subs(shop=subs.shop, plan=plan, offer=offer)
    anchor = datetime(2026, 1, 10, 9, 30, tzinfo=UTC)
    (subscription,) = monthly.bulk_active(1, anchor=anchor)
    (untouched,) = monthly.bulk_active(1, anchor=anchor + timedelta(days=5))  # its reminder not due yet
    client = staff_client("support")
    assert "Notices not sent" not in client.get(page(subscription)).content.decode()

    monthly.renew(datetime(2026, 2, 10, 9, 30, tzinfo=UTC) - timedelta(hours=23))  # too late to remind

    (notice,) = SubscriptionNotice.objects.exclude(skipped_reason="")
    assert notice.subscription_id == subscription.pk
    text = client.get(page(subscription)).content.decode()
    section = text[text.index("Notices not sent") : text.index("Status changes")]
    assert '<tr data-period="1"><td>#1</td><td>renewal reminder</td>' in section
    assert f"{notice.created_at:%Y-%m-%d %H:%M:%S}" in section
    assert escape(notice.skipped_reason) in section
    assert "23.0 h away" in section
    assert "Notices not sent" not in client.get(page(untouched)).content.decode()
