import json
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import path, reverse
from unfold.widgets import UnfoldAdminTextareaWidget, UnfoldAdminURLInputWidget, UnfoldBooleanSwitchWidget

from carriers.adapters.base import Outcome
from carriers.models import Carrier, Country, NetworkCode, NumberPrefix, PricePoint
from carriers.services import check_carrier_connection
from journal.services import record_staff_action
from playpay.admin_base import ModelAdmin, TabularInline
from playpay.money import UnknownCurrency, validate_currency


@admin.register(Country)
class CountryAdmin(ModelAdmin[Country]):
    list_display = ["code", "name", "currency", "dialing_code", "vat_rate"]
    search_fields = ["code", "name", "currency", "dialing_code"]
    list_filter = ["currency"]
    list_editable = ["vat_rate"]
    readonly_fields = ["code"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # seeded from ISO 3166; edit, don't invent


class CarrierForm(forms.ModelForm[Carrier]):
    endpoint = forms.URLField(
        required=False,
        assume_scheme="https",
        widget=UnfoldAdminURLInputWidget,
        help_text="Base URL of the carrier's API.",
    )
    new_credentials = forms.CharField(
        label="Credentials",
        required=False,
        widget=UnfoldAdminTextareaWidget(attrs={"rows": 3, "autocomplete": "off", "placeholder": '{"client_id": "…"}'}),
        help_text="A JSON object. Write-only: stored encrypted and never shown again. Leave empty to keep.",
    )
    clear_credentials = forms.BooleanField(
        required=False, widget=UnfoldBooleanSwitchWidget, help_text="Remove the stored credentials."
    )
    change_reason = forms.CharField(
        required=False, max_length=255, help_text="Why this change (kept in the staff actions)."
    )

    class Meta:
        model = Carrier
        exclude: list[str] = []

    def clean_new_credentials(self) -> dict[str, Any] | None:
        raw = self.cleaned_data["new_credentials"].strip()
        if not raw:
            return None
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise forms.ValidationError(f"Not valid JSON: {exc.msg} (line {exc.lineno}).") from exc
        if not isinstance(value, dict):
            raise forms.ValidationError("Credentials must be a JSON object.")
        return value

    def save(self, commit: bool = True) -> Carrier:
        carrier = super().save(commit=False)
        if self.cleaned_data.get("clear_credentials"):
            carrier.credentials = {}
        elif self.cleaned_data.get("new_credentials") is not None:
            carrier.credentials = self.cleaned_data["new_credentials"]
        if commit:
            carrier.save()
        return carrier


class PricePointForm(forms.ModelForm[PricePoint]):
    class Meta:
        model = PricePoint
        exclude: list[str] = []

    def clean_currency(self) -> str:
        try:
            return validate_currency(self.cleaned_data["currency"])
        except UnknownCurrency as exc:
            raise forms.ValidationError(str(exc)) from exc


class PricePointInline(TabularInline[PricePoint, Carrier]):
    model = PricePoint
    form = PricePointForm
    extra = 0
    fields = ["code", "amount_minor", "currency", "tax_included", "carrier_payout_minor", "is_active"]


class NetworkCodeInline(TabularInline[NetworkCode, Carrier]):
    model = NetworkCode
    extra = 0


class NumberPrefixInline(TabularInline[NumberPrefix, Carrier]):
    model = NumberPrefix
    extra = 0


@admin.register(Carrier)
class CarrierAdmin(ModelAdmin[Carrier]):
    form = CarrierForm
    list_display = [
        "name",
        "slug",
        "country",
        "protocol",
        "is_active",
        "success_rate",
        "latency",
        "breaker",
        "mcc_mnc",
    ]
    list_filter = ["is_active", "protocol", "supports_pin", "supports_one_click", "supports_refund", "country"]
    search_fields = ["name", "slug", "country__name", "network_codes__mcc", "network_codes__mnc"]
    list_select_related = ["country", "health"]
    readonly_fields = ["credentials_status", "health_summary", "created_at", "updated_at"]
    inlines = [PricePointInline, NetworkCodeInline, NumberPrefixInline]
    actions = ["activate", "deactivate"]
    fieldsets = [
        (None, {"fields": ["name", "slug", "country", "is_active"]}),
        ("Connection", {"fields": ["protocol", "endpoint", "connect_timeout_ms", "read_timeout_ms"]}),
        ("Credentials", {"fields": ["credentials_status", "new_credentials", "clear_credentials"]}),
        (
            "Capabilities",
            {
                "fields": [
                    "supports_pin",
                    "supports_one_click",
                    "supports_refund",
                    "supports_reversal",
                    "supports_subscriptions",
                    "deduplicates_reference_code",
                ]
            },
        ),
        (
            "Resilience",
            {
                "fields": [
                    "max_retries",
                    "retry_backoff_seconds",
                    "insufficient_funds_retry_minutes",
                    "rate_limit_per_second",
                    "breaker_failure_threshold",
                    "breaker_reset_seconds",
                    "health_summary",
                ]
            },
        ),
        ("Commercial", {"fields": ["revenue_share"]}),
        ("History", {"fields": ["change_reason", "created_at", "updated_at"]}),
    ]

    def get_queryset(self, request: HttpRequest) -> Any:
        return super().get_queryset(request).prefetch_related("network_codes")

    def get_search_results(self, request: HttpRequest, queryset: Any, search_term: str) -> tuple[Any, bool]:
        found, duplicates = super().get_search_results(request, queryset, search_term)
        if request.path == reverse("admin:autocomplete"):
            # Pickers (filters, forms) offer the carriers taking payments first, before the operator catalogue.
            found = found.order_by("-is_active", "name")
        return found, duplicates

    @admin.display(description="MCC-MNC")
    def mcc_mnc(self, carrier: Carrier) -> str:
        return ", ".join(str(code) for code in carrier.network_codes.all())

    @admin.display(description="success")
    def success_rate(self, carrier: Carrier) -> str:
        health = getattr(carrier, "health", None)
        rate = health.success_rate_percent if health else None
        return "—" if rate is None else f"{rate}%"

    @admin.display(description="latency")
    def latency(self, carrier: Carrier) -> str:
        health = getattr(carrier, "health", None)
        return f"{health.avg_latency_ms} ms" if health and health.avg_latency_ms is not None else "—"

    @admin.display(description="breaker")
    def breaker(self, carrier: Carrier) -> str:
        health = getattr(carrier, "health", None)
        return health.breaker_state if health else "—"

    @admin.display(description="Health (last 15 min)")
    def health_summary(self, carrier: Carrier) -> str:
        health = getattr(carrier, "health", None)
        if health is None:
            return "no calls measured yet"
        return (
            f"{health.calls} calls: {health.succeeded} approved, {health.declined} declined, "
            f"{health.unknown} no answer, {health.unreachable} unreachable; avg {health.avg_latency_ms} ms, "
            f"max {health.max_latency_ms} ms; breaker {health.breaker_state}; updated {health.updated_at:%H:%M:%S}"
        )

    @admin.display(description="Stored credentials")
    def credentials_status(self, carrier: Carrier) -> str:
        return "set (hidden)" if carrier.has_credentials else "none"

    @admin.action(description="Activate selected carriers", permissions=["change"])
    def activate(self, request: HttpRequest, queryset: Any) -> None:
        self._set_active(request, queryset, True)

    @admin.action(description="Deactivate selected carriers", permissions=["change"])
    def deactivate(self, request: HttpRequest, queryset: Any) -> None:
        self._set_active(request, queryset, False)

    def _set_active(self, request: HttpRequest, queryset: Any, active: bool) -> None:
        action = "activate" if active else "deactivate"
        for carrier in queryset:
            carrier.is_active = active
            carrier.save(update_fields=["is_active", "updated_at"])
            record_staff_action(user=_staff(request), action=action, target=carrier, reason="", outcome="done")
        self.message_user(request, f"{queryset.count()} carrier(s) {action}d.")

    def save_model(self, request: HttpRequest, obj: Carrier, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        changed = ", ".join(sorted(set(form.changed_data) - {"new_credentials", "change_reason"}))
        if form.cleaned_data.get("new_credentials") is not None or form.cleaned_data.get("clear_credentials"):
            changed = ", ".join(filter(None, [changed, "credentials"]))
        record_staff_action(
            user=_staff(request),
            action="change" if change else "add",
            target=obj,
            reason=form.cleaned_data.get("change_reason", ""),
            outcome=changed[:255],
        )

    def get_urls(self) -> list[Any]:
        extra = [
            path(
                "<path:object_id>/test-connection/",
                self.admin_site.admin_view(self.test_connection_view),
                name="carriers_carrier_test_connection",
            )
        ]
        return extra + super().get_urls()

    def test_connection_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        carrier = self.get_object(request, object_id)
        if request.method != "POST" or carrier is None or not self.has_change_permission(request, carrier):
            raise PermissionDenied
        result = check_carrier_connection(carrier=carrier)
        ok = result.outcome == Outcome.SUCCEEDED
        summary = f"{'reachable' if ok else 'failed'}: {result.raw_code} {result.raw_message}".strip()
        record_staff_action(user=_staff(request), action="test_connection", target=carrier, reason="", outcome=summary)
        self.message_user(request, f"{carrier.slug}: {summary}", level=messages.SUCCESS if ok else messages.ERROR)
        return HttpResponseRedirect(reverse("admin:carriers_carrier_change", args=[carrier.pk]))


@admin.register(PricePoint)
class PricePointAdmin(ModelAdmin[PricePoint]):
    form = PricePointForm
    list_display = ["code", "carrier", "amount_minor", "currency", "tax_included", "carrier_payout_minor", "is_active"]
    list_filter = ["is_active", "currency", "tax_included", "carrier__country"]
    search_fields = ["code", "carrier__name", "carrier__slug"]
    list_select_related = ["carrier"]
    autocomplete_fields = ["carrier"]


@admin.register(NumberPrefix)
class NumberPrefixAdmin(ModelAdmin[NumberPrefix]):
    list_display = ["prefix", "carrier"]
    search_fields = ["prefix", "carrier__name", "carrier__slug"]
    list_select_related = ["carrier"]
    autocomplete_fields = ["carrier"]


def _staff(request: HttpRequest) -> AbstractBaseUser:
    user = request.user
    assert isinstance(user, AbstractBaseUser)  # the admin requires a signed-in user
    return user
