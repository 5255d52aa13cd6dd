"""The staff dashboard and the dataset query/export endpoints (session sign-in, as the admin)."""

from datetime import datetime
from urllib.parse import urlencode
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django import forms
from django.contrib import admin
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.core.exceptions import PermissionDenied
from django.http import (
    HttpRequest,
    HttpResponseRedirect,
    JsonResponse,
    QueryDict,
)
from django.http.response import HttpResponseBase
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.dateparse import parse_datetime
from django.utils.timezone import is_naive, make_aware
from django.views.decorators.http import require_GET

from playpay.api.problems import problem_json
from playpay.downloads import csv_attachment, file_attachment
from playpay.tables import TableFormat
from reporting.models import Dashboard, Dataset
from reporting.selectors import (
    DEFAULT_PERIOD,
    PERIODS,
    DashboardFilters,
    can_view_dashboard,
    dashboard_choices,
    dashboard_data,
    visible_dashboards,
)
from reporting.services import datasets
from reporting.services.datasets import DatasetQuery, DatasetQueryError

# The dashboard's export links: the payments dataset per carrier and day, with these measures.
EXPORT_MEASURES = ("payments", "charged_payments", "failed_payments", "revenue_minor", "success_rate")


def _signed_in_staff(request: HttpRequest) -> HttpResponseRedirect | None:
    """Sign-in goes through the admin's login (and its second factor)."""
    if admin.site.has_permission(request):  # the admin's own rule: active staff, second factor when on
        return None
    return HttpResponseRedirect(f"{reverse('admin:login')}?{urlencode({'next': request.get_full_path()})}")


def _dashboard(request: HttpRequest, slug: str) -> Dashboard:
    dashboard = get_object_or_404(Dashboard, slug=slug)
    if not can_view_dashboard(_user(request), dashboard):
        raise PermissionDenied("This dashboard is not shared with your groups.")
    return dashboard


def _user(request: HttpRequest) -> AbstractBaseUser | AnonymousUser:
    return request.user


class DashboardFilterForm(forms.Form):
    period = forms.ChoiceField(choices=[(name, name) for name in PERIODS], required=False)
    app = forms.CharField(max_length=100, required=False)
    country = forms.CharField(max_length=2, required=False)
    carrier = forms.CharField(max_length=80, required=False)
    tz = forms.CharField(max_length=64, required=False)

    def clean_tz(self) -> str:
        zone = self.cleaned_data["tz"] or "UTC"
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise forms.ValidationError(f"{zone!r} is not a time zone.") from None
        return str(zone)

    def filters(self) -> DashboardFilters:
        data = self.cleaned_data
        return DashboardFilters(
            period=data["period"] or DEFAULT_PERIOD,
            app=data["app"],
            country=data["country"].upper(),
            carrier=data["carrier"],
            timezone=data["tz"],
        )


@require_GET
def dashboard_index(request: HttpRequest) -> HttpResponseBase:
    """The stable entry point: the first dashboard the user may see."""
    if (redirect := _signed_in_staff(request)) is not None:
        return redirect
    dashboards = visible_dashboards(_user(request))
    if not dashboards:
        raise PermissionDenied("No dashboard is shared with your groups.")
    return HttpResponseRedirect(reverse("reporting:dashboard", args=[dashboards[0].slug]))


@require_GET
def dashboard_page(request: HttpRequest, slug: str) -> HttpResponseBase:
    if (redirect := _signed_in_staff(request)) is not None:
        return redirect
    dashboard = _dashboard(request, slug)
    context = {
        **admin.site.each_context(request),
        "is_nav_sidebar_enabled": False,  # the charts take the page's width
        "title": dashboard.title,
        "dashboard": dashboard,
        "choices": dashboard_choices(),
        "selected": {name: request.GET.get(name, "") for name in ("period", "app", "country", "carrier")},
        "default_period": DEFAULT_PERIOD,
        "data_url": reverse("reporting:dashboard-data", args=[dashboard.slug]),
        # What the export links ask of the payments dataset; the page adds its period and filters.
        "export_query": urlencode({"measures": ",".join(EXPORT_MEASURES), "group_by": "carrier", "bucket": "day"}),
    }
    return TemplateResponse(request, "reporting/dashboard.html", context)


@require_GET
def dashboard_json(request: HttpRequest, slug: str) -> HttpResponseBase:
    if _signed_in_staff(request) is not None:
        return problem_json(401, "not_authenticated", "Authentication is required", "Sign in to the admin first.")
    dashboard = _dashboard(request, slug)
    form = DashboardFilterForm(request.GET)
    if not form.is_valid():
        detail = "; ".join(f"{name}: {' '.join(str(e) for e in errors)}" for name, errors in form.errors.items())
        return problem_json(400, "invalid_dashboard_filters", "The dashboard filters are not valid", detail)
    try:
        data = dashboard_data(dashboard=dashboard, filters=form.filters())
    except DatasetQueryError as error:
        return problem_json(400, error.code, error.title, error.detail)
    response = JsonResponse(data)
    response["Cache-Control"] = "no-store"
    return response


def parse_dataset_query(params: QueryDict) -> DatasetQuery:
    """`measures=a,b&group_by=c&bucket=day&since=…&until=…&tz=…&f.<dimension>=value` (repeat for several)."""

    def names(key: str) -> tuple[str, ...]:
        return tuple(name.strip() for value in params.getlist(key) for name in value.split(",") if name.strip())

    def moment(key: str) -> datetime | None:
        raw = params.get(key, "")
        if not raw:
            return None
        parsed = parse_datetime(raw) or (parse_datetime(f"{raw}T00:00:00") if len(raw) == 10 else None)
        if parsed is None:
            raise DatasetQueryError(f"{key}={raw!r} is not an ISO 8601 date or time.")
        return make_aware(parsed, ZoneInfo(params.get("tz") or "UTC")) if is_naive(parsed) else parsed

    filters = {key[2:]: tuple(params.getlist(key)) for key in params if key.startswith("f.")}
    try:
        zone = params.get("tz") or "UTC"
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise DatasetQueryError(f"{zone!r} is not a time zone.") from None
    return DatasetQuery(
        measures=names("measures"),
        group_by=names("group_by"),
        bucket=params.get("bucket") or None,
        filters=filters,
        since=moment("since"),
        until=moment("until"),
        timezone=zone,
    )


def _dataset_for(request: HttpRequest, slug: str) -> Dataset:
    if not request.user.has_perm("reporting.view_dataset"):
        raise PermissionDenied("You may not read the data catalog.")
    return get_object_or_404(Dataset.objects.prefetch_related("fields"), slug=slug)


@require_GET
def dataset_query_json(request: HttpRequest, slug: str) -> HttpResponseBase:
    if _signed_in_staff(request) is not None:
        return problem_json(401, "not_authenticated", "Authentication is required", "Sign in to the admin first.")
    dataset = _dataset_for(request, slug)
    try:
        result = datasets.run_query(dataset=dataset, query=parse_dataset_query(request.GET))
    except DatasetQueryError as error:
        return problem_json(400, error.code, error.title, error.detail)
    return JsonResponse({"dataset": dataset.slug, **result.as_json()})


@require_GET
def dataset_export(request: HttpRequest, slug: str, file_format: str) -> HttpResponseBase:
    if (redirect := _signed_in_staff(request)) is not None:
        return redirect
    dataset = _dataset_for(request, slug)
    if file_format not in TableFormat.values:
        return problem_json(404, "not_found", "No such format", "Exports are .csv or .xlsx.")
    try:
        query = parse_dataset_query(request.GET)
        name = datasets.query_file_name(dataset=dataset, file_format=file_format)
        if file_format == TableFormat.CSV:
            return csv_attachment(datasets.export_query_csv(dataset=dataset, query=query), name=name)
        content = datasets.export_query_file(dataset=dataset, query=query, file_format=file_format)
    except DatasetQueryError as error:
        return problem_json(400, error.code, error.title, error.detail)
    return file_attachment(content, name=name, file_format=file_format)
