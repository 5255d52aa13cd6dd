from datetime import timedelta
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html

from funnel.models import FunnelDefinition, FunnelEvent, Journey
from funnel.rollups import MOVED_LOOKBACK, dashboard_report
from funnel.selectors import BREAKDOWNS, ReportTimedOut
from playpay.admin_base import ModelAdmin, RecordAdmin, check_period, recent_values_filter
from playpay.downloads import file_attachment
from playpay.tables import temporary_file, write_table
from playpay.times import start_of_utc_day


@admin.register(Journey)
class JourneyAdmin(RecordAdmin):
    list_display = [
        "journey_id",
        "app",
        "user_ref",
        "started_at",
        "carrier",
        "country",
        "price_point",
        "flow",
        "outcome",
    ]
    # Only filters that read no whole-table DISTINCT: this table and the next are the biggest there are (the
    # outcome's values are those of the newest journeys; Django's own filter read every row's, 0.5 s at 6.6 M).
    list_filter = [recent_values_filter("outcome"), "app"]
    search_fields = ["=journey_id", "=user_ref"]
    list_select_related = ["app"]


@admin.register(FunnelEvent)
class FunnelEventAdmin(RecordAdmin):
    list_display = ["occurred_at", "app", "journey_id", "step", "source", "error_code", "received_at"]
    list_filter = ["source", "app"]
    search_fields = ["=journey_id", "=event_id"]
    list_select_related = ["app"]


class ReportForm(forms.Form):
    since = forms.DateField(help_text="First day (UTC)")
    until = forms.DateField(help_text="Last day, included")
    breakdown = forms.ChoiceField(choices=[("", "—"), *((b, b) for b in BREAKDOWNS)], required=False)
    compare_since = forms.DateField(required=False, help_text="Optional second period to compare")
    compare_until = forms.DateField(required=False)

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        check_period(self, cleaned, "since", "until")
        check_period(self, cleaned, "compare_since", "compare_until")
        if (
            bool(cleaned.get("compare_since")) != bool(cleaned.get("compare_until"))
            and not self.has_error("compare_since")
            and not self.has_error("compare_until")
        ):
            missing = "compare_until" if cleaned.get("compare_since") else "compare_since"
            self.add_error(missing, "Give both days of the period to compare, or neither.")
        return cleaned


@admin.register(FunnelDefinition)
class FunnelDefinitionAdmin(ModelAdmin[FunnelDefinition]):
    list_display = ["name", "app", "steps", "window_seconds", "exclusion_step", "report_link"]
    search_fields = ["name"]

    @admin.display(description="report")
    def report_link(self, definition: FunnelDefinition) -> str:
        return format_html('<a href="{}">open</a>', reverse("admin:funnel_report", args=[definition.pk]))

    def get_urls(self) -> list[Any]:
        view = self.admin_site.admin_view(self.report_view)
        return [path("<int:pk>/report/", view, name="funnel_report"), *super().get_urls()]

    def report_view(self, request: HttpRequest, pk: int) -> HttpResponseBase:
        definition = self.get_object(request, str(pk))
        if definition is None or not self.has_view_permission(request, definition):
            raise PermissionDenied
        today = timezone.now().date()
        form = ReportForm(request.GET or {"since": today - timedelta(days=6), "until": today})
        reports = []
        if form.is_valid():
            data = form.cleaned_data
            periods = [("Period", data["since"], data["until"])]
            if data["compare_since"] and data["compare_until"]:
                periods.append(("Compared with", data["compare_since"], data["compare_until"]))
            try:
                for label, first, last in periods:
                    report, source = dashboard_report(
                        funnel=definition,
                        since=start_of_utc_day(first),
                        until=start_of_utc_day(last + timedelta(days=1)),
                        breakdown=data["breakdown"] or None,
                        timeout_ms=settings.FUNNEL_REPORT_TIMEOUT_MS,
                    )
                    reports.append({"label": f"{label} {first} to {last}", "report": report, "source": source})
            except ReportTimedOut:
                reports = []
                seconds = settings.FUNNEL_REPORT_TIMEOUT_MS / 1000
                messages.error(
                    request,
                    f"This period's events take too long to count here (more than {seconds:g} s in ClickHouse): "
                    "a shorter period, or a breakdown less, counts in time."
                    if settings.ANALYTICS_BACKEND == "clickhouse"
                    else "This period's raw events take too long to count here. Its hourly rollups are not all "
                    "computed yet: `manage.py refresh_funnel_rollups` computes them, then the page reads them.",
                )
            if reports and request.GET.get("export") in ("csv", "xlsx"):
                return _export(definition, reports, request.GET["export"])
        context = {
            **self.admin_site.each_context(request),
            "title": f"Funnel: {definition.name}",
            "definition": definition,
            "form": form,
            "reports": reports,
            "breakdown": form.cleaned_data.get("breakdown") if form.is_valid() else "",
            "query": request.GET.urlencode(),
            "rollup_lookback_hours": int(MOVED_LOOKBACK / timedelta(hours=1)),
        }
        return TemplateResponse(request, "admin/funnel/funneldefinition/report.html", context)


EXPORT_HEADER = ["period", "step", "entered", "conversion_from_previous", "drop_off", "median_s", "p90_s"]


def _export(definition: FunnelDefinition, reports: list[dict[str, Any]], kind: str) -> HttpResponseBase:
    """The report as CSV or XLSX, written by the exports' own writers (formula-safe CSV cells)."""
    rows = [
        [
            block["label"],
            step.step,
            step.entered,
            step.conversion_from_previous,
            step.drop_off,
            step.median_seconds_from_previous,
            step.p90_seconds_from_previous,
        ]
        for block in reports
        for step in block["report"].steps
    ]
    content = temporary_file(lambda out: write_table(out, EXPORT_HEADER, rows, file_format=kind, title="funnel"))
    return file_attachment(content, name=f"funnel-{definition.pk}.{kind}", file_format=kind)
