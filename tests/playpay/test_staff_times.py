"""Every staff page writes a moment one way, to the second and in UTC: "2026-03-05 14:07:09 UTC"."""

from datetime import UTC, datetime

import pytest
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth.models import User
from django.contrib.contenttypes.models import ContentType
from django.urls import reverse

from carriers.charts import health_chart
from carriers.selectors import CallFigures
from journal.models import StaffAction
from playpay.tables import TableFormat
from reporting.models import ExportJob, ExportKind
from tests.carriers.test_admin import carrier_form
from tests.conftest import StaffClient
from tests.factories import CarrierFactory

pytestmark = pytest.mark.django_db

MOMENT = datetime(2026, 3, 5, 14, 7, 9, tzinfo=UTC)
SHOWN = "2026-03-05 14:07:09 UTC"


def test_a_configuration_change_shows_its_time_with_seconds_and_utc_in_both_histories(
    staff_client: StaffClient,
) -> None:
    carrier = CarrierFactory.create(name="Vodafone UK")
    client = staff_client("superuser")
    change = reverse("admin:carriers_carrier_change", args=[carrier.pk])
    assert client.post(change, carrier_form(carrier, name="Vodafone", change_reason="rebrand")).status_code == 302
    carrier.history.update(history_date=MOMENT)

    for page in (
        reverse("admin:carriers_carrier_history", args=[carrier.pk]),
        reverse("admin:configuration_changes"),
    ):
        html = client.get(page).content.decode()
        assert SHOWN in html, page
        assert "p.m." not in html, page
        assert "March 5" not in html, page


def test_the_staff_log_and_the_admin_s_own_history_show_seconds_and_utc(staff_client: StaffClient) -> None:
    client = staff_client("superuser")
    admin_user = User.objects.get(username="superuser")
    action = StaffAction.objects.create(
        user=admin_user, action="change", object_type="carriers.carrier", object_id="7", reason="rebrand"
    )
    StaffAction.objects.filter(pk=action.pk).update(created_at=MOMENT)
    assert SHOWN in client.get(reverse("admin:journal_staffaction_changelist")).content.decode()

    LogEntry.objects.create(
        action_time=MOMENT,
        user=admin_user,
        content_type=ContentType.objects.get_for_model(User),
        object_id=str(admin_user.pk),
        object_repr=str(admin_user),
        action_flag=CHANGE,
        change_message="Changed email.",
    )
    history = client.get(reverse("admin:auth_user_history", args=[admin_user.pk])).content.decode()
    assert SHOWN in history


def test_the_export_jobs_list_shows_seconds_and_utc(staff_client: StaffClient) -> None:
    job = ExportJob.objects.create(
        user=User.objects.create_user("exporter"), kind=ExportKind.values[0], file_format=TableFormat.values[0]
    )
    ExportJob.objects.filter(pk=job.pk).update(created_at=MOMENT)
    assert SHOWN in staff_client("superuser").get(reverse("admin:reporting_exportjob_changelist")).content.decode()


def test_the_carrier_health_chart_names_each_hour_with_seconds_and_utc() -> None:
    chart = health_chart([CallFigures(calls=4, avg_latency_ms=120.0, start=MOMENT)], title="Last hour", label="%H:00")
    assert "2026-03-05 14:07:09 UTC: 100.0 %" in chart
