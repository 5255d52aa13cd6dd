"""Finance screens: exports (now or in the background) and carrier settlement files with their reconciliation."""

import json
from pathlib import PurePath
from typing import Any
from urllib.parse import urlencode

from django import forms
from django.contrib import admin, messages
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied
from django.db import models
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.http.response import HttpResponseBase
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from carriers.admin import ConfiguredCarrierFilter
from playpay.admin_base import ModelAdmin, ReadOnlyInline, RecordAdmin, TabularInline
from playpay.downloads import csv_attachment, file_attachment
from playpay.tables import TableFormat, temporary_file
from reporting.catalog import JOURNAL_SOURCES, SQL_SOURCES
from reporting.forms import ExportForm, SettlementUploadForm
from reporting.models import (
    AlertEvent,
    AlertRule,
    Dashboard,
    Dataset,
    DatasetField,
    ExportJob,
    SettlementFile,
    SourceKind,
    TimeBucket,
)
from reporting.services import datasets as catalog_datasets
from reporting.services import exports
from reporting.services.datasets import DatasetQueryError
from reporting.services.exports import ExportFilters
from reporting.services.reconciliation import (
    Category,
    SettlementFileRejected,
    import_settlement_file,
    reconcile_settlement_file,
    report_file_name,
    write_report,
)
from reporting.views import parse_dataset_query

# The reconciliation page lists at most this many lines; the export has them all.
PAGE_LINES = 1000


def _staff(request: HttpRequest) -> AbstractBaseUser:
    user = request.user
    assert isinstance(user, AbstractBaseUser)  # the admin requires a signed-in user
    return user


@admin.register(ExportJob)
class ExportJobAdmin(RecordAdmin):
    list_display = [
        "id",
        "created_at",
        "user",
        "kind",
        "file_format",
        "scope",
        "status",
        "progress",
        "attempts",
        "download",
    ]
    list_filter = ["status", "kind", "file_format"]
    list_select_related = ["user"]
    # `download` instead of the file field: the files have no public URL.
    fields = [
        "user",
        "kind",
        "file_format",
        "scope",
        "status",
        "progress",
        "download",
        "error",
        "attempts",
        "worker",
        "heartbeat_at",
        "created_at",
        "started_at",
        "finished_at",
    ]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return self.fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm("reporting.add_exportjob"))

    def get_urls(self) -> list[Any]:
        download = self.admin_site.admin_view(self.download_view)
        now = self.admin_site.admin_view(self.download_now_view)
        return [
            path("<int:pk>/download/", download, name="reporting_exportjob_download"),
            path("download-now/", now, name="reporting_exportjob_download_now"),
            *super().get_urls(),
        ]

    @admin.display(description="filters")
    def scope(self, job: ExportJob) -> str:
        return ExportFilters.from_json(job.filters).describe()

    @admin.display(description="progress")
    def progress(self, job: ExportJob) -> str:
        percent = job.progress_percent
        if percent is None:
            return f"{job.rows_done:,} rows" if job.rows_done else "—"
        about = "" if job.rows_total_exact else "about "
        return f"{percent}% ({job.rows_done:,} of {about}{job.rows_total:,} rows)"

    @admin.display(description="file")
    def download(self, job: ExportJob) -> str:
        if job.status == ExportJob.Status.FAILED:
            return job.error
        if job.status != ExportJob.Status.DONE or not job.file:
            return "—"
        url = reverse("admin:reporting_exportjob_download", args=[job.pk])
        return format_html('<a href="{}">download</a>', url)

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        working = ExportJob.objects.filter(status__in=[ExportJob.Status.PENDING, ExportJob.Status.RUNNING]).exists()
        return super().changelist_view(request, {**(extra_context or {}), "refresh_seconds": 5 if working else 0})

    def add_view(
        self, request: HttpRequest, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        """The export form; "Run in the background" posts here, "Download now" to `download_now_view`."""
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = ExportForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            job = exports.start_export_job(
                user=_staff(request),
                kind=form.cleaned_data["kind"],
                filters=form.filters(),
                file_format=form.cleaned_data["file_format"],
            )
            self.message_user(
                request, f"Export #{job.pk} queued; a worker runs it, and it appears here when it is ready."
            )
            return HttpResponseRedirect(reverse("admin:reporting_exportjob_changelist"))
        return self._export_form(request, form)

    def download_now_view(self, request: HttpRequest) -> HttpResponseBase:
        """A small export, streamed at once; a big one is refused with a pointer to the background."""
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = ExportForm(request.POST or None)
        if request.method != "POST" or not form.is_valid():
            return self._export_form(request, form)
        kind, file_format, filters = form.cleaned_data["kind"], form.cleaned_data["file_format"], form.filters()
        rows, _ = exports.estimate_export_rows(kind=kind, filters=filters)
        if rows > exports.DIRECT_DOWNLOAD_LIMIT:
            form.add_error(
                None,
                f"{rows} rows are more than {exports.DIRECT_DOWNLOAD_LIMIT} to download at once: "
                "run the export in the background.",
            )
            return self._export_form(request, form)
        name = exports.export_file_name(kind=kind, filters=filters, file_format=file_format)
        if file_format == TableFormat.CSV:
            return csv_attachment(exports.stream_csv(kind=kind, filters=filters), name=name)
        content = exports.export_to_temporary_file(kind=kind, filters=filters, file_format=file_format)
        return file_attachment(content, name=name, file_format=file_format)

    def _export_form(self, request: HttpRequest, form: ExportForm) -> TemplateResponse:
        context = {
            **self.admin_site.each_context(request),
            "title": "Export for finance",
            "opts": self.model._meta,
            "form": form,
            "limit": exports.DIRECT_DOWNLOAD_LIMIT,
        }
        return TemplateResponse(request, "admin/reporting/exportjob/start.html", context)

    def download_view(self, request: HttpRequest, pk: int) -> HttpResponseBase:
        job = ExportJob.objects.filter(pk=pk).first()
        if job is None or job.status != ExportJob.Status.DONE or not job.file:
            raise Http404("No such finished export.")
        if not self.has_view_permission(request, job):
            raise PermissionDenied
        return file_attachment(
            job.file.open("rb"), name=PurePath(job.file.name or "export").name, file_format=job.file_format
        )

    def delete_model(self, request: HttpRequest, obj: ExportJob) -> None:
        exports.delete_export_jobs(jobs=[obj])

    def delete_queryset(self, request: HttpRequest, queryset: Any) -> None:
        exports.delete_export_jobs(jobs=list(queryset))


@admin.register(SettlementFile)
class SettlementFileAdmin(ModelAdmin[SettlementFile]):
    list_display = [
        "name",
        "carrier",
        "period_from",
        "period_to",
        "row_count",
        "status",
        "matched",
        "amount_mismatches",
        "missing_on_our_side",
        "missing_on_their_side",
        "uploaded_by",
        "uploaded_at",
    ]
    list_filter = ["status", ("carrier", ConfiguredCarrierFilter)]
    list_select_related = ["carrier", "uploaded_by"]
    search_fields = ["name"]
    date_hierarchy = "period_to"

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # a settlement file is what the carrier sent: replaced by a new upload, never edited

    def get_urls(self) -> list[Any]:
        export = self.admin_site.admin_view(self.export_view)
        return [
            path(
                "<int:pk>/reconciliation.<str:file_format>",
                export,
                name="reporting_settlementfile_reconciliation",
            ),
            *super().get_urls(),
        ]

    def add_view(
        self, request: HttpRequest, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        """Upload a carrier's settlement file: all of it is imported, or nothing and the reasons are listed."""
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = SettlementUploadForm(request.POST or None, request.FILES or None)
        rejected: list[str] = []
        if request.method == "POST" and form.is_valid():
            upload = form.cleaned_data["file"]
            try:
                settlement_file = import_settlement_file(
                    carrier=form.cleaned_data["carrier"],
                    name=upload.name,
                    content=upload.read(),
                    uploaded_by=_staff(request),
                    period_from=form.cleaned_data["period_from"],
                    period_to=form.cleaned_data["period_to"],
                )
            except SettlementFileRejected as error:
                rejected = error.errors
            else:
                self.message_user(
                    request, f"{settlement_file.row_count} lines imported and reconciled.", level=messages.SUCCESS
                )
                return HttpResponseRedirect(reverse("admin:reporting_settlementfile_change", args=[settlement_file.pk]))
        context = {
            **self.admin_site.each_context(request),
            "title": "Upload a settlement file",
            "opts": self.model._meta,
            "form": form,
            "rejected": rejected,
        }
        return TemplateResponse(request, "admin/reporting/settlementfile/upload.html", context)

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        """The reconciliation of the file with our payments, as of now."""
        settlement_file = self._file(request, object_id)
        report = reconcile_settlement_file(settlement_file=settlement_file)
        category = request.GET.get("category", "")
        if category not in Category.values:
            category = ""
        rows = report.rows_in(category)
        context = {
            **self.admin_site.each_context(request),
            "title": f"Reconciliation of {settlement_file.name}",
            "opts": self.model._meta,
            "original": settlement_file,
            "settlement_file": settlement_file,
            "summary": [(value, label, report.counts[Category(value)]) for value, label in Category.choices],
            "category": category,
            "rows": rows[:PAGE_LINES],
            "shown_all": len(rows) <= PAGE_LINES,
            "total": len(rows),
            "all_count": len(report.rows),
            "can_delete": self.has_delete_permission(request, settlement_file),
        }
        return TemplateResponse(request, "admin/reporting/settlementfile/reconciliation.html", context)

    def export_view(self, request: HttpRequest, pk: int, file_format: str) -> HttpResponseBase:
        if file_format not in TableFormat.values:
            raise Http404("CSV or XLSX only.")
        report = reconcile_settlement_file(settlement_file=self._file(request, str(pk)))
        category = request.GET.get("category") or None
        content = temporary_file(lambda out: write_report(report, file_format=file_format, out=out, category=category))
        return file_attachment(content, name=report_file_name(report, file_format), file_format=file_format)

    def _file(self, request: HttpRequest, object_id: str) -> SettlementFile:
        settlement_file = self.get_object(request, object_id)
        if settlement_file is None:
            raise Http404("No such settlement file.")
        if not self.has_view_permission(request, settlement_file):
            raise PermissionDenied
        return settlement_file


# --- Data catalog, dashboards, alerts ------------------------------------------------------------


class DatasetFieldInlineForm(forms.ModelForm):  # type: ignore[type-arg]
    class Meta:
        model = DatasetField
        fields = ["name", "label", "role", "source", "data_type", "unit", "aggregation", "description"]


class DatasetFieldInline(TabularInline):  # type: ignore[type-arg]
    model = DatasetField
    form = DatasetFieldInlineForm
    extra = 0


@admin.register(Dataset)
class DatasetAdmin(ModelAdmin[Dataset]):
    list_display = ["name", "slug", "source_kind", "source", "owner", "api_fetched_at", "api_last_error", "query_link"]
    list_filter = ["source_kind"]
    list_select_related = ["owner"]
    search_fields = ["name", "slug", "description"]
    inlines = [DatasetFieldInline]
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}
    readonly_fields = ["sources_help", "api_fetched_at", "api_attempted_at", "api_last_error", "api_payload_preview"]
    fieldsets = [
        (None, {"fields": ["slug", "name", "description", "owner"]}),
        ("Source", {"fields": ["source_kind", "source", "time_field", "sources_help"]}),
        (
            "API source",
            {
                "fields": [
                    "api_url",
                    "api_rows_path",
                    "api_timeout_seconds",
                    "api_refresh_minutes",
                    "api_fetched_at",
                    "api_attempted_at",
                    "api_last_error",
                    "api_payload_preview",
                ]
            },
        ),
    ]
    actions = ["fetch_now"]

    @admin.display(description="registered sources")
    def sources_help(self, dataset: Dataset) -> str:
        lines = [
            format_html(
                "<b>{}</b> {}: {} <i>(time: {})</i>", kind, name, ", ".join(src.fields), ", ".join(src.time_fields)
            )
            for kind, registry in (("sql", SQL_SOURCES), ("journal", JOURNAL_SOURCES))
            for name, src in registry.items()
        ]
        return format_html_join("", "<div>{}</div>", ((line,) for line in lines))

    @admin.display(description="cached payload")
    def api_payload_preview(self, dataset: Dataset) -> str:
        if dataset.api_payload is None:
            return "—"
        text = json.dumps(dataset.api_payload, indent=1)
        return format_html("<pre style='max-height: 20em; overflow: auto'>{}</pre>", text[:5000])

    @admin.display(description="query")
    def query_link(self, dataset: Dataset) -> str:
        return format_html(
            '<a href="{}">query / export</a>', reverse("admin:reporting_dataset_query", args=[dataset.pk])
        )

    @admin.action(description="Fetch selected API datasets now")
    def fetch_now(self, request: HttpRequest, queryset: Any) -> None:
        for dataset in queryset.filter(source_kind=SourceKind.API):
            fetched = catalog_datasets.fetch_api_dataset(dataset_id=dataset.pk)
            if fetched.api_last_error:
                self.message_user(request, f"{fetched}: {fetched.api_last_error}", level=messages.ERROR)
            else:
                self.message_user(request, f"{fetched}: fetched.", level=messages.SUCCESS)

    def get_urls(self) -> list[Any]:
        view = self.admin_site.admin_view(self.query_view)
        return [path("<int:pk>/query/", view, name="reporting_dataset_query"), *super().get_urls()]

    def query_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        """Try a query on the dataset, see the table, export it as CSV or XLSX."""
        dataset = self.get_object(request, str(pk))
        if dataset is None or not self.has_view_permission(request, dataset):
            raise PermissionDenied
        fields = list(dataset.fields.all())
        result = None
        error = ""
        if request.GET.get("measures"):
            try:
                result = catalog_datasets.run_query(dataset=dataset, query=parse_dataset_query(request.GET))
            except DatasetQueryError as exc:
                error = exc.detail
        context = {
            **self.admin_site.each_context(request),
            "title": f"Query {dataset.name}",
            "opts": self.model._meta,
            "original": dataset,
            "dataset": dataset,
            "measures": [f for f in fields if f.role == "measure"],
            "dimensions": [f for f in fields if f.role == "dimension"],
            "buckets": TimeBucket.values,
            "params": request.GET,
            "chosen_measures": request.GET.getlist("measures"),
            "chosen_group_by": request.GET.getlist("group_by"),
            "filter_values": {key[2:]: value for key, value in request.GET.items() if key.startswith("f.") and value},
            "result": result,
            "error": error,
            "export_query": _non_empty_query(request),
        }
        return TemplateResponse(request, "admin/reporting/dataset/query.html", context)


def _non_empty_query(request: HttpRequest) -> str:
    pairs = [(key, value) for key, values in request.GET.lists() for value in values if value]
    return urlencode(pairs)


@admin.register(Dashboard)
class DashboardAdmin(ModelAdmin[Dashboard]):
    list_display = ["title", "slug", "currency", "funnel", "open_link"]
    filter_horizontal = ["groups"]

    @admin.display(description="page")
    def open_link(self, dashboard: Dashboard) -> str:
        return format_html('<a href="{}">open</a>', reverse("reporting:dashboard", args=[dashboard.slug]))


class AlertEventInline(ReadOnlyInline):
    model = AlertEvent
    fields = ["key", "fired_at", "fired_value", "resolved_at", "resolved_value"]
    ordering = ["-fired_at"]


@admin.register(AlertRule)
class AlertRuleAdmin(ModelAdmin[AlertRule]):
    list_display = [
        "name",
        "dataset",
        "condition",
        "group_by",
        "filters",
        "window_minutes",
        "is_active",
        "state",
        "last_evaluated_at",
    ]
    list_filter = ["is_active", "dataset"]
    list_select_related = ["dataset"]
    readonly_fields = ["last_evaluated_at"]
    inlines = [AlertEventInline]

    @admin.display(description="state")
    def state(self, rule: AlertRule) -> str:
        keys = [event.key or "firing" for event in rule.events.all() if event.is_open]
        return "firing: " + ", ".join(keys) if keys else "ok"

    def get_queryset(self, request: HttpRequest) -> Any:
        return super().get_queryset(request).prefetch_related("events")


@admin.register(AlertEvent)
class AlertEventAdmin(RecordAdmin):
    list_display = ["rule", "key", "fired_at", "fired_value", "resolved_at", "resolved_value"]
    list_filter = [("resolved_at", admin.EmptyFieldListFilter), "rule"]
    list_select_related = ["rule"]
    date_hierarchy = "fired_at"
