"""The back office's own admin pages render inside the admin's layout, with one title."""

from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from funnel.models import FunnelDefinition
from reporting.models import Dataset, SourceKind
from tests.conftest import StaffClient
from tests.factories import CarrierFactory


@pytest.mark.django_db
def test_each_custom_admin_page_has_exactly_one_title(staff_client: StaffClient) -> None:
    client = staff_client("superuser")
    funnel = FunnelDefinition.objects.create(name="Store", steps=["store_opened", "payment_created"])
    dataset = Dataset.objects.create(slug="pages", name="Pages", source_kind=SourceKind.SQL, source="payments")
    pages = [
        reverse("admin:payments_payment_timeline"),
        reverse("admin:reporting_exportjob_add"),
        reverse("admin:reporting_settlementfile_add"),
        reverse("admin:funnel_report", args=[funnel.pk]),
        reverse("admin:reporting_dataset_query", args=[dataset.pk]),
    ]
    for url in pages:
        response = client.get(url)
        assert response.status_code == 200, url
        assert response.content.decode().count("<h1") == 1, url


@pytest.mark.django_db
def test_a_model_page_leads_back_to_its_model_list(staff_client: StaffClient) -> None:
    client = staff_client("superuser")
    for page, changelist in (
        ("admin:reporting_exportjob_add", "admin:reporting_exportjob_changelist"),
        ("admin:reporting_settlementfile_add", "admin:reporting_settlementfile_changelist"),
    ):
        html = client.get(reverse(page)).content.decode()
        header = html[html.index("<h1") :]  # the admin's header: the trail from the app down to this page
        assert f'href="{reverse(changelist)}"' in header[: header.index("</h1>")], page


@pytest.mark.django_db
def test_the_sign_in_page_asks_for_an_authenticator_code_only_when_the_second_factor_is_on(settings: Any) -> None:
    settings.STAFF_2FA = False
    page = Client().get("/admin/login/").content.decode()
    assert 'name="password"' in page
    assert "otp_token" not in page
    assert "OTP Token" not in page
    assert "Authenticator code" not in page

    settings.STAFF_2FA = True
    page = Client().get("/admin/login/").content.decode()
    assert 'name="otp_token"' in page
    assert '<label for="id_otp_token"' in page
    assert "Authenticator code" in page


@pytest.mark.django_db
def test_the_sidebar_groups_pages_by_job_and_shows_a_role_only_what_it_may_open(staff_client: StaffClient) -> None:
    everything = staff_client("superuser").get(reverse("admin:index")).content.decode()
    for group in (
        "Payments &amp; players",
        "Carriers",
        "Finance &amp; reporting",
        "Funnel",
        "Audit &amp; staff",
        "Scheduler",
    ):
        assert group in everything, group
    assert 'href="/admin/django_celery_beat/periodictask/"' in everything

    support = staff_client("support").get(reverse("admin:index")).content.decode()
    assert 'href="/admin/payments/payment/"' in support
    assert 'href="/admin/auth/user/"' not in support
    assert "Scheduler" not in support


@pytest.mark.django_db
def test_the_command_palette_finds_a_carrier_by_name(staff_client: StaffClient) -> None:
    carrier = CarrierFactory.create(name="Palette Telecom")
    response = staff_client("superuser").get(reverse("admin:search"), {"s": "Palette Tel", "extended": "1"})
    assert response.status_code == 200
    assert reverse("admin:carriers_carrier_change", args=[carrier.pk]) in response.content.decode()
