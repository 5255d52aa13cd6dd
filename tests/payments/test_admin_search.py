"""Finding payments and players from the admin's one search box, the list's filters, and the player page."""

from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import pytest
from django.test import Client

from journal.models import StaffAction
from payments.models import Payment, PaymentStatus, PlayerBlock
from tests.conftest import MSISDN, Shop, StaffClient
from tests.factories import AppFactory, CarrierFactory, CountryFactory, PaymentFactory, PricePointFactory

pytestmark = pytest.mark.django_db
CHANGELIST = "/admin/payments/payment/"
PLAYER = "/admin/payments/payment/player/"


def search(client: Client, term: str) -> Any:
    return client.get(CHANGELIST, {"q": term})


def change_url(payment: Payment) -> str:
    return f"{CHANGELIST}{payment.pk}/change/"


def test_a_national_format_number_lands_on_its_only_payment(staff_client: StaffClient) -> None:
    payment = PaymentFactory.create(msisdn="+447722836885")
    PaymentFactory.create(msisdn="+447400123456")
    for typed in ("07722836885", "+44 7722 836885", "447722836885", "0044 7722-836885"):
        response = search(staff_client("support"), typed)
        assert (response.status_code, response["Location"]) == (302, change_url(payment)), typed


def test_a_number_with_several_payments_lands_on_the_player_page(staff_client: StaffClient) -> None:
    PaymentFactory.create_batch(2, msisdn="+447722836885")
    response = search(staff_client("support"), "07722836885")
    assert response.status_code == 302
    assert response["Location"] == PLAYER + "?" + urlencode({"msisdn": "+447722836885"})


def test_a_public_id_and_a_prefix_of_eight_characters_land_on_the_payment(staff_client: StaffClient) -> None:
    payment = PaymentFactory.create(created_at=datetime(2026, 3, 5, 10, 0, tzinfo=UTC))
    PaymentFactory.create(created_at=datetime(2026, 3, 5, 11, 0, tzinfo=UTC))
    support = staff_client("support")
    full = str(payment.public_id)
    for typed in (full, full.upper(), full[:8], full[:13], full.replace("-", "")[:20]):
        response = search(support, typed)
        assert (response.status_code, response["Location"]) == (302, change_url(payment)), typed
    # Seven characters are no prefix search: the list, empty.
    response = search(support, full[:7])
    assert response.status_code == 200
    assert full not in response.content.decode()


def test_an_older_random_id_is_found_by_its_prefix_too(staff_client: StaffClient) -> None:
    payment = PaymentFactory.create(public_id="3f2b8c1e-0000-4000-8000-000000000001")
    response = search(staff_client("support"), "3f2b8c1e")
    assert (response.status_code, response["Location"]) == (302, change_url(payment))


def test_a_user_ref_a_carrier_reference_and_an_idempotency_key_land_on_the_payment(
    staff_client: StaffClient,
) -> None:
    payment = PaymentFactory.create(user_ref="dragon-42", carrier_reference="CR-9911", idempotency_key="order-77")
    PaymentFactory.create(user_ref="other", carrier_reference="CR-1", idempotency_key="order-1")
    support = staff_client("support")
    for typed in ("dragon-42", "CR-9911", "order-77"):
        response = search(support, typed)
        assert (response.status_code, response["Location"]) == (302, change_url(payment)), typed


def test_a_user_ref_with_several_payments_in_one_app_lands_on_the_player_page(staff_client: StaffClient) -> None:
    first = PaymentFactory.create(user_ref="dragon-42")
    PaymentFactory.create(user_ref="dragon-42", app=first.app, price_point=first.price_point)
    response = search(staff_client("support"), "dragon-42")
    assert response["Location"] == PLAYER + "?" + urlencode({"app": first.app.pk, "user_ref": "dragon-42"})


def test_a_user_ref_in_two_apps_shows_both_in_the_list(staff_client: StaffClient) -> None:
    one, two = PaymentFactory.create(user_ref="dragon-42"), PaymentFactory.create(user_ref="dragon-42")
    PaymentFactory.create(user_ref="someone-else")
    response = search(staff_client("support"), "dragon-42")
    assert response.status_code == 200
    text = response.content.decode()
    assert str(one.public_id) in text
    assert str(two.public_id) in text
    assert "someone-else" not in text


def test_the_list_shows_money_status_number_and_utc_times_masked_per_role(staff_client: StaffClient) -> None:
    PaymentFactory.create(
        msisdn="+447722836885",
        status=PaymentStatus.PARTIALLY_REFUNDED,
        refunded_minor=50,
        created_at=datetime(2026, 3, 5, 10, 11, 12, tzinfo=UTC),
    )
    support = staff_client("support").get(CHANGELIST).content.decode()
    assert "£0.99" in support
    assert "£0.50" in support
    assert "2026-03-05 10:11:12 UTC" in support
    assert "partially_refunded" in support
    assert "+447722836885" not in support
    assert "+44772*****85" in support
    assert "+447722836885" in staff_client("operations").get(CHANGELIST).content.decode()


def listed(client: Client, **params: Any) -> set[str]:
    response = client.get(CHANGELIST, params)
    assert response.status_code == 200
    text = response.content.decode()
    return {str(p.public_id) for p in Payment.objects.all() if str(p.public_id) in text}


def test_filters_by_carrier_country_date_time_range_and_amount_in_major_units(staff_client: StaffClient) -> None:
    march = datetime(2026, 3, 5, 10, 0, tzinfo=UTC)
    gbp = PaymentFactory.create(created_at=march)  # £0.99
    jp_carrier = CarrierFactory.create(country=CountryFactory.create(code="JP", name="Japan", currency="JPY"))
    jpy = PaymentFactory.create(
        price_point=PricePointFactory.create(carrier=jp_carrier, amount_minor=100, currency="JPY"),
        created_at=march + timedelta(days=1),
    )
    support = staff_client("support")
    assert listed(support, carrier__id__exact=jp_carrier.pk) == {str(jpy.public_id)}
    assert listed(support, carrier__country__code__exact="GB") == {str(gbp.public_id)}
    day = {"created_at_from_0": "2026-03-06", "created_at_from_1": "00:00", "created_at_to_0": "2026-03-07"}
    assert listed(support, **day, created_at_to_1="00:00") == {str(jpy.public_id)}
    malformed = support.get(CHANGELIST, {**day, "created_at_to_1": "25:99"})
    assert (malformed.status_code, malformed.get("Location")) == (302, CHANGELIST + "?e=1")  # the list's own notice
    # 0.99 is £0.99 (99 minor) and not ¥0.99; 100 is ¥100 and not £100.
    assert listed(support, amount_from="0.99", amount_to="0.99") == {str(gbp.public_id)}
    assert listed(support, amount_from="50", amount_to="150") == {str(jpy.public_id)}
    assert listed(support, amount_from="not a number") == set()


def test_the_carrier_autocomplete_offers_active_carriers_first(staff_client: StaffClient) -> None:
    # Configured (it has a price point) but not taking payments; the operator catalogue is not offered at all.
    PricePointFactory.create(carrier=CarrierFactory.create(name="Alpha Telecom", is_active=False))
    CarrierFactory.create(name="Zeta Mobile", is_active=True)
    CarrierFactory.create(name="Catalogue Only", is_active=False)
    response = staff_client("support").get(
        "/admin/autocomplete/",
        {"app_label": "payments", "model_name": "payment", "field_name": "carrier", "term": ""},
    )
    assert response.status_code == 200
    names = [row["text"].split(" (")[0] for row in response.json()["results"]]
    assert names.index("Zeta Mobile") < names.index("Alpha Telecom")
    assert "Catalogue Only" not in names


def test_the_player_page_totals_equal_the_players_payments(staff_client: StaffClient) -> None:
    app = AppFactory.create()
    price_point = PricePointFactory.create(amount_minor=500)
    common = {"app": app, "price_point": price_point, "user_ref": "dragon-42"}
    payments = [
        PaymentFactory.create(**common, status=PaymentStatus.SUCCEEDED),
        PaymentFactory.create(**common, status=PaymentStatus.PARTIALLY_REFUNDED, refunded_minor=200),
        PaymentFactory.create(**common, status=PaymentStatus.REVERSED),
        PaymentFactory.create(**common, status=PaymentStatus.FAILED, failure_code="insufficient_funds"),
        PaymentFactory.create(**common, status=PaymentStatus.FAILED, failure_code="insufficient_funds"),
    ]
    PaymentFactory.create(price_point=price_point, user_ref="dragon-42", status=PaymentStatus.SUCCEEDED)  # other app
    page = staff_client("support").get(PLAYER, {"app": str(app.pk), "user_ref": "dragon-42"})
    assert page.status_code == 200
    text = page.content.decode()
    assert "5 payments" in text
    charged = sum(p.amount_minor for p in payments if p.status != PaymentStatus.FAILED)  # 1500
    refunded = sum(p.refunded_minor for p in payments)  # 200
    reversed_ = sum(p.amount_minor for p in payments if p.status == PaymentStatus.REVERSED)  # 500
    spent = charged - refunded - reversed_
    row = f"<td>£{charged / 100:.2f}</td><td>£{refunded / 100:.2f}</td><td>£{reversed_ / 100:.2f}</td>"
    assert row in text
    assert f"<strong>£{spent / 100:.2f}</strong>" in text
    assert "<code>insufficient_funds</code></td><td>2</td>" in text
    for payment in payments:
        assert str(payment.public_id) in text


def block_number(client: Client, shop: Shop, msisdn: str, reason: str) -> Any:
    return client.post(PLAYER + "?" + urlencode({"msisdn": msisdn}), {"app": shop.app.pk, "reason": reason})


def test_a_blocked_number_is_refused_at_payment_creation_until_unblocked(shop: Shop, staff_client: StaffClient) -> None:
    shop.pay(key="before")
    support = staff_client("support")
    assert block_number(support, shop, MSISDN, "chargeback fraud ticket 881").status_code == 302
    block = PlayerBlock.objects.get()
    assert (block.app, block.msisdn, block.blocked_by) == (shop.app, MSISDN, "staff:support")

    refused = shop.create_payment(key="after-block")
    assert refused.status_code == 403
    assert refused["Content-Type"].startswith("application/problem+json")
    assert refused.json()["code"] == "player_blocked"
    assert Payment.objects.count() == 1

    page = support.post(PLAYER + "?" + urlencode({"msisdn": MSISDN}), {"unblock": block.pk, "reason": "cleared"})
    assert page.status_code == 302
    assert not PlayerBlock.objects.exists()
    assert shop.create_payment(key="after-block").status_code == 201  # the same key: it was left free
    actions = list(StaffAction.objects.order_by("id").values_list("action", "reason"))
    assert actions == [("block_player", "chargeback fraud ticket 881"), ("unblock_player", "cleared")]
    assert MSISDN not in str(list(StaffAction.objects.values_list("object_id", "outcome")))


def test_a_blocked_user_is_refused_in_that_app_only(shop: Shop, make_shop: Any, staff_client: StaffClient) -> None:
    shop.pay(key="k1", user_ref="cheater")
    support = staff_client("support")
    url = PLAYER + "?" + urlencode({"app": shop.app.pk, "user_ref": "cheater"})
    assert support.post(url, {"reason": ""}).status_code == 302  # no reason: nothing blocked
    assert not PlayerBlock.objects.exists()
    assert support.post(url, {"reason": "abuse"}).status_code == 302
    assert shop.create_payment(key="k2", user_ref="cheater").json()["code"] == "player_blocked"
    assert shop.create_payment(key="k3", user_ref="honest").status_code == 201
    other = make_shop(prefix="4475")
    assert other.create_payment(key="k4", user_ref="cheater", msisdn="+447500123456").status_code == 201


def test_finance_cannot_block(shop: Shop, staff_client: StaffClient) -> None:
    shop.pay()
    response = block_number(staff_client("finance"), shop, MSISDN, "try")
    assert response.status_code == 403
    assert not PlayerBlock.objects.exists()


def test_the_api_schema_documents_player_blocked(client: Any) -> None:
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    responses = schema["paths"]["/api/v1/payments/"]["post"]["responses"]
    assert "player_blocked" in responses["403"]["description"]


def test_a_search_or_filter_holding_a_nul_character_is_refused_not_failed(staff_client: StaffClient) -> None:
    PaymentFactory.create()
    support = staff_client("support")
    for query in ("q=%00", "status__exact=%00", "q=07722%00836885"):
        assert support.get(f"{CHANGELIST}?{query}").status_code == 400, query


def test_the_refusal_of_a_nul_character_never_sends_the_query_s_names_back_as_markup(client: Any) -> None:
    response = client.get("/admin/?%3Cscript%3Ealert(1)%3C/script%3E=%00")
    assert response.status_code == 400
    assert response["Content-Type"].startswith("text/plain")
    assert b"<script>" not in response.content
