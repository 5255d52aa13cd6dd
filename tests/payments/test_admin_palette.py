"""The command palette (Ctrl+K) reads a term as the payment list's search box does and offers the player's page."""

import re
from urllib.parse import urlencode

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse
from django.utils.html import escape

from tests.conftest import StaffClient
from tests.factories import AppFactory, PaymentFactory

pytestmark = pytest.mark.django_db
PLAYER = "/admin/payments/payment/player/"


def palette(client: Client, typed: str) -> list[tuple[str, str]]:
    """The palette's results for `typed`, as its endpoint answers the browser: (link, title) in order."""
    response = client.get(reverse("admin:search"), {"s": typed, "extended": "1"})
    assert response.status_code == 200
    html = response.content.decode()
    return re.findall(r'<a [^>]*href="([^"]*)"\s+data-title="([^"]*)"', html)


def test_a_national_format_number_offers_the_player_page_first_with_the_number_masked_per_role(
    staff_client: StaffClient,
) -> None:
    payments = PaymentFactory.create_batch(2, msisdn="+447722836885")
    PaymentFactory.create(msisdn="+447400123456")
    player = escape(PLAYER + "?" + urlencode({"msisdn": "+447722836885"}))

    results = palette(staff_client("support"), "07722836885")
    assert results[0] == (player, "Player +44772*****85")
    payment_links = {escape(reverse("admin:payments_payment_change", args=[p.pk])) for p in payments}
    assert {link for link, _ in results[1:]} == payment_links

    assert palette(staff_client("operations"), "+44 7722 836885")[0] == (player, "Player +447722836885")


def test_a_user_ref_is_read_as_typed_and_offers_its_player_in_each_app(staff_client: StaffClient) -> None:
    # unfold lower-cases the term for its own searches; a user_ref is case-sensitive.
    first = PaymentFactory.create(user_ref="Dragon-42", app=AppFactory.create(name="Alpha Quest"))
    second = PaymentFactory.create(user_ref="Dragon-42", app=AppFactory.create(name="Beta Wars"))
    PaymentFactory.create(user_ref="dragon-42", app=first.app)

    results = palette(staff_client("support"), "Dragon-42")
    players = [(link, title) for link, title in results if link.startswith(PLAYER)]
    assert players == [
        (
            escape(PLAYER + "?" + urlencode({"app": first.app.pk, "user_ref": "Dragon-42"})),
            "Player Dragon-42 of Alpha Quest",
        ),
        (
            escape(PLAYER + "?" + urlencode({"app": second.app.pk, "user_ref": "Dragon-42"})),
            "Player Dragon-42 of Beta Wars",
        ),
    ]
    assert {title for link, title in results if not link.startswith(PLAYER)} == {
        str(first.public_id),
        str(second.public_id),
    }


def test_a_carrier_reference_typed_in_capitals_offers_its_payment(staff_client: StaffClient) -> None:
    payment = PaymentFactory.create(carrier_reference="CR-PALETTE-7")
    results = palette(staff_client("finance"), "CR-PALETTE-7")
    assert results == [(escape(reverse("admin:payments_payment_change", args=[payment.pk])), str(payment.public_id))]


def test_staff_who_may_not_view_payments_are_offered_no_player_or_payment(client: Client) -> None:
    PaymentFactory.create_batch(2, msisdn="+447722836885")
    client.force_login(User.objects.create_user("no-rights", is_staff=True))
    assert palette(client, "07722836885") == []


def test_a_term_typed_in_another_case_is_searched_again_not_answered_from_the_first(
    staff_client: StaffClient,
) -> None:
    upper = PaymentFactory.create(user_ref="Bob")
    lower = PaymentFactory.create(user_ref="bob", app=upper.app)
    client = staff_client("support")

    first = palette(client, "Bob")
    second = palette(client, "bob")

    assert [title for link, title in first if link.startswith(PLAYER)] == [f"Player Bob of {upper.app.name}"]
    assert [title for link, title in second if link.startswith(PLAYER)] == [f"Player bob of {lower.app.name}"]
