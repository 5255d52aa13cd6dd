"""The once-per-page list rendering (playpay.admin_lists) writes the very page unfold's own functions write."""

import re

import pytest
from django.test import Client
from django.urls import reverse
from unfold.templatetags import unfold_list

from payments.models import PaymentStatus
from playpay import admin_lists
from tests.conftest import StaffClient
from tests.factories import CarrierFactory, PaymentFactory, PricePointFactory

_CSRF = re.compile(r'(name="csrfmiddlewaretoken" value=")[^"]*(")')


def _page(client: Client, url: str) -> str:
    response = client.get(url)
    assert response.status_code == 200, url
    return _CSRF.sub(r"\1\2", response.content.decode())


def _with_unfolds_functions(monkeypatch: pytest.MonkeyPatch, client: Client, url: str) -> str:
    assert admin_lists.original_result_headers is not None
    assert admin_lists.original_display_for_label is not None
    with monkeypatch.context() as patched:
        patched.setattr(unfold_list, "result_headers", admin_lists.original_result_headers)
        patched.setattr(unfold_list, "display_for_label", admin_lists.original_display_for_label)
        return _page(client, url)


@pytest.mark.django_db
def test_the_change_lists_are_the_pages_unfold_writes(
    staff_client: StaffClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = staff_client("superuser")
    other = CarrierFactory(name="Other carrier")
    PaymentFactory(status=PaymentStatus.SUCCEEDED, user_ref="player-a")
    PaymentFactory(status=PaymentStatus.FAILED, user_ref="player-b")
    PaymentFactory(status=PaymentStatus.SUCCEEDED, user_ref="player-c")
    PaymentFactory(status=PaymentStatus.CREATED, user_ref="", price_point=PricePointFactory(carrier=other))
    payments = reverse("admin:payments_payment_changelist")
    carriers = reverse("admin:carriers_carrier_changelist")
    # Each page after another, in both orders: headers kept for one list must never show on the next (another
    # model's columns, or the same columns sorted another way), nor a badge of one status for another.
    pages = [payments, f"{payments}?o=-3.2", carriers, f"{payments}?status__exact=failed", payments]

    installed = [_page(client, url) for url in pages]
    original = [_with_unfolds_functions(monkeypatch, client, url) for url in pages]

    assert unfold_list.result_headers is not admin_lists.original_result_headers  # the test compared two forms
    for url, ours, unfolds in zip(pages, installed, original, strict=True):
        assert ours == unfolds, url
    first = installed[0]
    assert "player-a" in first
    assert "player-b" in first
    assert ">Other carrier (GB)<" in first
    assert first.count('data-label="status"') == 4  # each row's cell under its own column's header
    assert installed[1] != installed[0]  # the sorted page's header links are its own


@pytest.mark.django_db
def test_installing_twice_changes_nothing(staff_client: StaffClient) -> None:
    headers, label = unfold_list.result_headers, unfold_list.display_for_label
    originals = admin_lists.original_result_headers, admin_lists.original_display_for_label

    admin_lists.install()

    assert (unfold_list.result_headers, unfold_list.display_for_label) == (headers, label)
    assert (admin_lists.original_result_headers, admin_lists.original_display_for_label) == originals
    assert originals != (headers, label)
    PaymentFactory(status=PaymentStatus.SUCCEEDED)
    page = staff_client("superuser").get(reverse("admin:payments_payment_changelist"))
    assert page.status_code == 200
    assert page.content.decode().count('data-label="status"') == 1
