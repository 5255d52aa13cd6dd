"""The back office's own admin pages render inside the admin's layout, with one title."""

import pytest
from django.urls import reverse

from funnel.models import FunnelDefinition
from reporting.models import Dataset, SourceKind
from tests.conftest import StaffClient


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
        breadcrumbs = html[html.index('class="breadcrumbs"') :]
        assert f'href="{reverse(changelist)}"' in breadcrumbs[: breadcrumbs.index("</div>")], page
