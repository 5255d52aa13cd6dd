"""The admin's sidebar, grouped by the job a person comes to do; each link shown only to whom may open it."""

from collections.abc import Callable
from typing import Any

from django.apps import apps
from django.contrib import admin
from django.http import HttpRequest
from django.urls import NoReverseMatch, reverse
from django.utils.text import capfirst

from playpay.admin_history import history_models

# (group, [(model label or admin URL name, Material Symbols icon, title when a URL name)]).
# A model not named here is still reached from "All applications" and the command palette.
SIDEBAR: list[tuple[str, list[tuple[str, str, str]]]] = [
    (
        "Payments & players",
        [
            ("payments.Payment", "receipt_long", ""),
            ("subscriptions.Subscription", "autorenew", ""),
            ("admin:payments_payment_timeline", "timeline", "Interaction timeline"),
            ("payments.Refund", "undo", ""),
            ("payments.RefundApproval", "approval", ""),
            ("payments.Reversal", "replay", ""),
            ("payments.WebhookDelivery", "send", ""),
            ("payments.CarrierNotification", "notifications", ""),
            ("payments.IdempotencyRecord", "key", ""),
            ("payments.OutboxMessage", "outbox", ""),
            ("tenants.App", "sports_esports", ""),
            ("tenants.ApiKey", "vpn_key", ""),
        ],
    ),
    (
        "Carriers",
        [
            ("carriers.Carrier", "cell_tower", ""),
            ("carriers.OperatorCatalogue", "travel_explore", ""),
            ("carriers.PricePoint", "sell", ""),
            ("subscriptions.Plan", "event_repeat", ""),
            ("subscriptions.PlanOffer", "storefront", ""),
            ("carriers.NumberPrefix", "dialpad", ""),
            ("carriers.Country", "public", ""),
        ],
    ),
    (
        "Finance & reporting",
        [
            ("reporting.ExportJob", "download", ""),
            ("reporting.SettlementFile", "request_quote", ""),
            ("admin:reporting_settlement_report", "summarize", "Settlement report per carrier"),
            ("payments.LedgerEntry", "account_balance", ""),
            ("payments.LedgerLine", "list_alt", ""),
            ("reporting.Dashboard", "dashboard", ""),
            ("reporting.Dataset", "dataset", ""),
            ("reporting.AlertRule", "notification_important", ""),
            ("reporting.AlertEvent", "warning", ""),
        ],
    ),
    (
        "Funnel",
        [
            ("funnel.FunnelDefinition", "filter_alt", ""),
            ("funnel.Journey", "route", ""),
            ("funnel.FunnelEvent", "event", ""),
        ],
    ),
    (
        "Audit & staff",
        [
            ("admin:configuration_changes", "manage_history", "Configuration changes"),
            ("journal.StaffAction", "history", ""),
            ("auth.User", "person", ""),
            ("auth.Group", "group", ""),
            ("otp_totp.TOTPDevice", "phonelink_lock", ""),
            ("axes.AccessAttempt", "lock_clock", ""),
            ("axes.AccessFailureLog", "gpp_bad", ""),
        ],
    ),
    (
        "Scheduler",
        [
            ("django_celery_beat.PeriodicTask", "schedule", ""),
            ("django_celery_beat.IntervalSchedule", "timer", ""),
            ("django_celery_beat.CrontabSchedule", "calendar_month", ""),
            ("django_celery_beat.ClockedSchedule", "alarm", ""),
            ("django_celery_beat.SolarSchedule", "wb_twilight", ""),
        ],
    ),
]


def _sees_some_history(request: HttpRequest) -> bool:
    return bool(history_models(request))


# Who may open each page of the sidebar that is not a model's list (the page checks it again).
PAGE_PERMISSIONS: dict[str, str | Callable[[HttpRequest], bool]] = {
    "admin:payments_payment_timeline": "payments.view_payment",
    "admin:configuration_changes": _sees_some_history,
    "admin:reporting_settlement_report": "payments.view_ledgerline",
}


def _model_item(request: HttpRequest, label: str, icon: str) -> dict[str, Any] | None:
    try:
        model = apps.get_model(label)
    except LookupError:
        return None
    model_admin = admin.site._registry.get(model)
    if model_admin is None or not model_admin.has_view_or_change_permission(request):
        return None
    opts = model._meta
    return {
        "title": capfirst(str(opts.verbose_name_plural)),
        "icon": icon,
        "link": reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist"),
    }


def _page_item(request: HttpRequest, url_name: str, icon: str, title: str) -> dict[str, Any] | None:
    try:
        link = reverse(url_name)
    except NoReverseMatch:
        return None
    # Open to whom may view what it shows (the page checks it again).
    permission = PAGE_PERMISSIONS[url_name]
    if not (request.user.has_perm(permission) if isinstance(permission, str) else permission(request)):
        return None
    return {"title": title, "icon": icon, "link": link}


def sidebar(request: HttpRequest) -> list[dict[str, Any]]:
    """unfold's SIDEBAR["navigation"]: the groups above, less what this person may not open."""
    groups = []
    for title, entries in SIDEBAR:
        items = [
            item
            for target, icon, page_title in entries
            if (
                item := _page_item(request, target, icon, page_title)
                if target.startswith("admin:")
                else _model_item(request, target, icon)
            )
        ]
        if items:
            groups.append({"title": title, "separator": True, "items": items})
    return groups
