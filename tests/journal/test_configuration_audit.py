"""Changes to configuration through the admin: a reason is required, kept with the before/after history and
in the staff log; the history is readable per object and as one list; constraint errors are plain sentences
on the field they concern."""

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.core.exceptions import ValidationError
from django.test import Client
from django.urls import reverse

from carriers.models import Carrier, PricePoint
from funnel.models import FunnelDefinition
from journal.models import StaffAction
from reporting.models import Dashboard
from tenants.models import ApiKey
from tenants.services import issue_api_key
from tests.carriers.test_admin import carrier_form
from tests.conftest import StaffClient
from tests.factories import AppFactory, CarrierFactory, PricePointFactory

pytestmark = pytest.mark.django_db

REFUSED = "Give a reason for this change"


def change_url(carrier: Carrier) -> str:
    return reverse("admin:carriers_carrier_change", args=[carrier.pk])


def test_a_carrier_change_without_a_reason_is_refused_on_the_reason_field(staff_client: StaffClient) -> None:
    carrier = CarrierFactory.create(name="Vodafone UK")
    response = staff_client("superuser").post(
        change_url(carrier), carrier_form(carrier, name="Vodafone", change_reason="")
    )
    assert response.status_code == 200  # the form again
    assert response.context["adminform"].form.errors["change_reason"] == [
        "Give a reason for this change: it is kept with the change for whoever reads the history."
    ]
    carrier.refresh_from_db()
    assert carrier.name == "Vodafone UK"
    assert not StaffAction.objects.exists()


def test_a_carrier_change_with_a_reason_keeps_who_why_and_before_and_after(staff_client: StaffClient) -> None:
    carrier = CarrierFactory.create(name="Vodafone UK", read_timeout_ms=10000)
    response = staff_client("superuser").post(
        change_url(carrier), carrier_form(carrier, name="Vodafone", read_timeout_ms="8000", change_reason="rebrand")
    )
    assert response.status_code == 302
    latest = carrier.history.latest()
    assert (latest.history_user.username, latest.history_change_reason, latest.history_type) == (
        "superuser",
        "rebrand",
        "~",
    )
    delta = latest.diff_against(latest.prev_record)
    assert {(c.field, c.old, c.new) for c in delta.changes} >= {
        ("name", "Vodafone UK", "Vodafone"),
        ("read_timeout_ms", 10000, 8000),
    }
    action = StaffAction.objects.get()
    assert (action.action, action.reason, action.object_repr) == ("change", "rebrand", "Vodafone (GB)")
    assert {"name", "read_timeout_ms"} <= set(action.outcome.split(", "))  # the names; the history has the values


def test_the_history_never_keeps_carrier_credentials(staff_client: StaffClient) -> None:
    carrier = CarrierFactory.create()
    staff_client("superuser").post(
        change_url(carrier), carrier_form(carrier, new_credentials='{"client_secret": "s3cr3t-value"}')
    )
    history_page = staff_client("superuser").get(reverse("admin:carriers_carrier_history", args=[carrier.pk]))
    assert history_page.status_code == 200
    assert "s3cr3t" not in history_page.content.decode()
    assert not any(f.name == "credentials_encrypted" for f in carrier.history.model._meta.fields)


def test_a_price_point_added_on_the_carrier_page_is_recorded_with_the_reason(staff_client: StaffClient) -> None:
    carrier = CarrierFactory.create()
    form = carrier_form(carrier, change_reason="new bundle for the winter sale") | {
        "price_points-TOTAL_FORMS": "1",
        "price_points-0-code": "gems-1200",
        "price_points-0-price": "9.99",
        "price_points-0-currency": "GBP",
        "price_points-0-carrier_payout": "7.00",
        "price_points-0-is_active": "on",
    }
    assert staff_client("superuser").post(change_url(carrier), form).status_code == 302
    price_point = PricePoint.objects.get(carrier=carrier, code="gems-1200")
    created = price_point.history.get()
    assert (created.history_type, created.history_change_reason) == ("+", "new bundle for the winter sale")
    logged = StaffAction.objects.get(object_type="pricepoint")
    assert (logged.action, logged.reason, logged.object_repr) == (
        "add",
        "new bundle for the winter sale",
        str(price_point),
    )


def test_a_payout_above_the_price_is_a_plain_sentence_on_the_payout_field(staff_client: StaffClient) -> None:
    price_point = PricePointFactory.create(amount_minor=99, carrier_payout_minor=69)
    response = staff_client("superuser").post(
        reverse("admin:carriers_pricepoint_change", args=[price_point.pk]),
        {
            "carrier": price_point.carrier_id,
            "code": price_point.code,
            "price": "0.99",
            "currency": "GBP",
            "tax_included": "on",
            "carrier_payout": "1.50",
            "is_active": "on",
            "change_reason": "new contract",
        },
    )
    assert response.status_code == 200
    form = response.context["adminform"].form
    assert form.errors["carrier_payout"] == [
        "The carrier's payout must be between zero and the price itself: a carrier never pays out more than it charges."
    ]
    assert not form.non_field_errors()
    assert "price_point_payout_within_amount" not in response.content.decode()


def test_deactivating_carriers_needs_a_reason_given_beside_the_action(staff_client: StaffClient) -> None:
    admin = staff_client("superuser")
    carrier = CarrierFactory.create(is_active=True)
    changelist = reverse("admin:carriers_carrier_changelist")

    refused = admin.post(changelist, {"action": "deactivate", "_selected_action": [carrier.pk]}, follow=True)
    assert REFUSED in refused.content.decode()
    assert Carrier.objects.get(pk=carrier.pk).is_active

    admin.post(changelist, {"action": "deactivate", "_selected_action": [carrier.pk], "reason": "billing outage"})
    assert not Carrier.objects.get(pk=carrier.pk).is_active
    latest = carrier.history.latest()
    assert (latest.history_change_reason, latest.history_user.username) == ("billing outage", "superuser")
    assert StaffAction.objects.get(action="deactivate").reason == "billing outage"


def test_issuing_and_revoking_api_keys_need_a_reason_and_are_in_the_keys_history(staff_client: StaffClient) -> None:
    admin = staff_client("superuser")
    app = AppFactory.create()
    apps = reverse("admin:tenants_app_changelist")

    admin.post(apps, {"action": "issue_key", "_selected_action": [app.pk]})
    assert not ApiKey.objects.filter(app=app).exists()
    admin.post(apps, {"action": "issue_key", "_selected_action": [app.pk], "reason": "new backend servers"})
    issued = ApiKey.objects.get(app=app)
    assert issued.history.get().history_change_reason == "new backend servers"

    keys = reverse("admin:tenants_apikey_changelist")
    admin.post(keys, {"action": "revoke", "_selected_action": [issued.pk]})
    assert ApiKey.objects.get(pk=issued.pk).is_active
    admin.post(keys, {"action": "revoke", "_selected_action": [issued.pk], "reason": "key leaked in a log"})
    assert not ApiKey.objects.get(pk=issued.pk).is_active
    revoked = issued.history.latest()
    assert revoked.history_change_reason == "key leaked in a log"
    assert [(c.field, c.old) for c in revoked.diff_against(revoked.prev_record).changes] == [("revoked_at", None)]
    assert list(StaffAction.objects.order_by("id").values_list("action", "reason")) == [
        ("issue", "new backend servers"),
        ("revoke", "key leaked in a log"),
    ]


def test_a_role_change_needs_a_reason_and_keeps_its_permissions_before_and_after(staff_client: StaffClient) -> None:
    admin = staff_client("superuser")
    role = Group.objects.create(name="night-shift")
    view = Permission.objects.get(codename="view_payment")
    refund = Permission.objects.get(codename="refund_payment")
    url = reverse("admin:auth_group_change", args=[role.pk])

    assert admin.post(url, {"name": "night-shift", "permissions": [view.pk, refund.pk]}).status_code == 200
    assert not role.permissions.exists()

    response = admin.post(
        url, {"name": "night-shift", "permissions": [view.pk, refund.pk], "change_reason": "covers refunds at night"}
    )
    assert response.status_code == 302
    assert set(role.permissions.all()) == {view, refund}
    latest = role.history.latest()  # type: ignore[attr-defined]  # added by simple-history's register()
    assert latest.history_change_reason == "covers refunds at night"
    assert {p.permission_id for p in latest.permissions.all()} == {view.pk, refund.pk}


def test_configuration_changes_lists_every_model_filterable_by_model_and_person(staff_client: StaffClient) -> None:
    admin = staff_client("superuser")
    carrier = CarrierFactory.create(name="Three UK")
    admin.post(change_url(carrier), carrier_form(carrier, name="Three", change_reason="rebrand"))
    app = AppFactory.create()
    issue_api_key(app=app, label="seeded", reason="seeded by a script")
    url = reverse("admin:configuration_changes")

    everything = admin.get(url).content.decode()
    assert "rebrand" in everything
    assert "Three UK → Three" in everything
    assert "seeded by a script" in everything

    carriers_only = admin.get(url, {"model": "carriers.carrier"}).content.decode()
    assert "rebrand" in carriers_only
    assert "seeded by a script" not in carriers_only

    by_person = admin.get(url, {"user": "superuser"}).content.decode()
    assert "rebrand" in by_person
    assert "seeded by a script" not in by_person  # no person made that change


def test_the_staff_log_names_the_object_not_only_its_id(staff_client: StaffClient) -> None:
    admin = staff_client("superuser")
    carrier = CarrierFactory.create(name="EE")
    admin.post(change_url(carrier), carrier_form(carrier, change_reason="checked settings"))
    page = admin.get(reverse("admin:journal_staffaction_changelist")).content.decode()
    assert f"EE (GB) ({carrier.pk})" in page


def test_a_person_who_may_not_view_configuration_does_not_see_its_changes(staff_client: StaffClient) -> None:
    admin = staff_client("superuser")
    carrier = CarrierFactory.create()
    admin.post(change_url(carrier), carrier_form(carrier, change_reason="secret plans"))
    clerk = User.objects.create_user("clerk", password="a-Str0ng-password", is_staff=True)
    clerk.user_permissions.add(Permission.objects.get(codename="view_payment"))
    client = Client()
    client.force_login(clerk)
    page = client.get(reverse("admin:configuration_changes")).content.decode()
    assert "secret plans" not in page
    assert "No changes recorded" in page
    assert 'href="/admin/configuration-changes/"' not in client.get(reverse("admin:index")).content.decode()


def test_a_funnel_window_of_zero_is_refused_in_words_on_its_field() -> None:
    funnel = FunnelDefinition(name="Store", steps=["store_opened", "payment_created"], window_seconds=0)
    with pytest.raises(ValidationError) as refused:
        funnel.full_clean()
    assert refused.value.message_dict == {"window_seconds": ["The conversion window is at least 1 second."]}


def test_a_dashboard_refreshing_faster_than_every_two_seconds_is_refused_on_its_field() -> None:
    with pytest.raises(ValidationError) as refused:
        Dashboard(slug="live", title="Live", refresh_seconds=1).full_clean()
    assert refused.value.message_dict == {"refresh_seconds": ["A dashboard refreshes at most every 2 seconds."]}


def test_an_old_version_is_never_saved_back_and_deleting_in_bulk_is_not_offered(staff_client: StaffClient) -> None:
    admin = staff_client("superuser")
    app = AppFactory.create()
    admin.post(
        reverse("admin:tenants_app_changelist"),
        {"action": "issue_key", "_selected_action": [app.pk], "reason": "new backend servers"},
    )
    key = ApiKey.objects.get(app=app)
    keys = reverse("admin:tenants_apikey_changelist")
    admin.post(keys, {"action": "revoke", "_selected_action": [key.pk], "reason": "key leaked in a log"})
    first = key.history.earliest()
    # Reverting to the version before the revocation would make the leaked key work again.
    revert = reverse("admin:tenants_apikey_simple_history", args=[key.pk, first.history_id])
    assert admin.post(revert, {"change_reason": "undo"}).status_code == 403
    assert not ApiKey.objects.get(pk=key.pk).is_active
    assert key.history.count() == 2  # issued, revoked: nothing saved by the attempt
    # The bulk delete would take no reason and leave no staff-log line.
    actions = admin.get(keys).context["action_form"].fields["action"].choices
    assert "delete_selected" not in [name for name, _ in actions]
