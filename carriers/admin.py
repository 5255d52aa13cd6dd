import json
from copy import copy
from datetime import timedelta
from typing import Any, cast

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Field, Model
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString
from unfold.widgets import UnfoldAdminTextareaWidget, UnfoldAdminURLInputWidget, UnfoldBooleanSwitchWidget

from carriers.adapters.base import Outcome
from carriers.charts import health_chart
from carriers.errors import CarrierNotReady
from carriers.gateway import Breaker
from carriers.models import (
    Carrier,
    CarrierQuerySet,
    Country,
    NetworkCode,
    NumberPrefix,
    OperatorCatalogue,
    PricePoint,
    Protocol,
)
from carriers.selectors import CallFigures, carrier_call_figures, carrier_call_history
from carriers.services import activation_blockers, check_carrier_connection, onboard_carrier, set_carrier_active
from journal.audit_admin import REASON, AuditedAdmin
from journal.services import record_staff_action
from playpay.admin_base import ModelAdmin, MoneyField, TabularInline, money_column
from playpay.money import UnknownCurrency, to_major, validate_currency


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

    monthly_spend_cap = MoneyField(
        label="Monthly spend cap",
        required=False,
        help_text="Most one number may be charged on this carrier in a calendar month (subscriptions are refused "
        "or not renewed above it; one-off payments count toward it), in major units of its country's currency: "
        "30 for £30. Empty: no cap.",
    )

    class Meta:
        model = Carrier
        exclude: list[str] = ["monthly_spend_cap_minor"]  # typed above, in major units

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        field = self.fields["monthly_spend_cap"]
        assert isinstance(field, MoneyField)
        field.currency = self._currency()
        cap = self.instance.monthly_spend_cap_minor
        if cap is not None and field.currency:
            self.initial["monthly_spend_cap"] = str(to_major(cap, field.currency))

    def _currency(self) -> str:
        """The currency of the country chosen (typed in this form, or the carrier's)."""
        country_id = self.data.get(self.add_prefix("country"), "") if self.is_bound else self.instance.country_id
        code = Country.objects.filter(pk=country_id).values_list("currency", flat=True).first() if country_id else ""
        try:
            return validate_currency(code or "")
        except UnknownCurrency:
            return ""

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

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if not cleaned.get("is_active"):
            return cleaned
        probe = copy(self.instance)  # as this form would save it, without saving it
        probe.protocol = cleaned.get("protocol", probe.protocol)
        probe.endpoint = cleaned.get("endpoint") or ""
        blockers = activation_blockers(probe)
        if self.has_error("endpoint"):
            blockers.pop("endpoint", None)  # said on the field already
        if self.instance.pk and self.instance.is_active:
            # Already taking payments: the form may not make it unreachable (its price points are their own).
            if "endpoint" in blockers:
                self.add_error("endpoint", f"An active carrier needs one: {blockers['endpoint']}.")
            return cleaned
        for blocker in blockers.values():
            self.add_error("is_active", f"Not yet: {blocker} (save, then activate).")
        return cleaned

    def save(self, commit: bool = True) -> Carrier:
        carrier = super().save(commit=False)
        if self.cleaned_data.get("clear_credentials"):
            carrier.credentials = {}
        elif self.cleaned_data.get("new_credentials") is not None:
            carrier.credentials = self.cleaned_data["new_credentials"]
        if cast(MoneyField, self.fields["monthly_spend_cap"]).currency:
            carrier.monthly_spend_cap_minor = self.cleaned_data.get("monthly_spend_cap")
        # else: no currency to read it in (the country has none set): the cap stored is kept as it was
        if commit:
            carrier.save()
        return carrier


class PricePointForm(forms.ModelForm[PricePoint]):
    """A price point as staff type it: the price and the carrier's payout in major units of its currency."""

    price = MoneyField(help_text="In major units of the currency: 9.99 for £9.99, 100 for ¥100.")
    carrier_payout = MoneyField(
        required=False,
        allow_zero=True,
        help_text="What the carrier pays out for one charge, in major units; empty: nothing.",
    )

    class Meta:
        model = PricePoint
        fields = ["carrier", "code", "currency", "tax_included", "is_active"]  # the amounts: above, in major units

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        typed = self.data.get(self.add_prefix("currency"), "") if self.is_bound else self.instance.currency
        try:
            currency = validate_currency(typed or "")
        except UnknownCurrency:
            currency = ""
        for name in ("price", "carrier_payout"):
            field = self.fields[name]
            assert isinstance(field, MoneyField)
            field.currency = currency
        if self.instance.pk:
            self.initial["price"] = str(to_major(self.instance.amount_minor, self.instance.currency))
            self.initial["carrier_payout"] = str(to_major(self.instance.carrier_payout_minor, self.instance.currency))

    def clean_currency(self) -> str:
        try:
            return validate_currency(self.cleaned_data["currency"])
        except UnknownCurrency as exc:
            raise forms.ValidationError(str(exc)) from exc

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        price, payout = cleaned.get("price"), cleaned.get("carrier_payout") or 0
        if price is not None:  # checked against each other by the model (PricePoint.clean)
            self.instance.amount_minor = price
            self.instance.carrier_payout_minor = payout
        return cleaned

    def _update_errors(self, errors: ValidationError) -> None:
        # The model's own checks name its minor-unit fields: here they are typed as the price and the payout.
        if hasattr(errors, "error_dict"):
            typed_as = {"amount_minor": "price", "carrier_payout_minor": "carrier_payout"}
            errors.error_dict = {typed_as.get(name, name): errs for name, errs in errors.error_dict.items()}
        super()._update_errors(errors)  # type: ignore[misc]  # a private hook the stubs leave out


class PricePointInline(TabularInline[PricePoint, Carrier]):
    model = PricePoint
    form = PricePointForm
    extra = 0
    fields = ["code", "price", "currency", "tax_included", "carrier_payout", "is_active"]


class NetworkCodeInline(TabularInline[NetworkCode, Carrier]):
    model = NetworkCode
    extra = 0


class NumberPrefixInline(TabularInline[NumberPrefix, Carrier]):
    model = NumberPrefix
    extra = 0


# The period of the health figures on the carrier pages: the dashboard's "24h", so that both agree.
HEALTH_PERIOD = timedelta(hours=24)


class ConfiguredCarrierFilter(admin.RelatedFieldListFilter):
    """A list filter on a carrier foreign key that offers configured carriers only, not the catalogue."""

    def field_choices(self, field: Field[Any, Any], request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [(str(carrier.pk), str(carrier)) for carrier in Carrier.objects.configured().order_by("name")]


class CountryOfConfiguredCarriersFilter(admin.RelatedFieldListFilter):
    """The countries that have a configured carrier, not the ~250 of the catalogue."""

    def field_choices(self, field: Field[Any, Any], request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        countries = Country.objects.filter(carriers__in=Carrier.objects.configured()).distinct().order_by("name")
        return [(str(country.pk), str(country)) for country in countries]


def _with_call_figures(changelist: ChangeList) -> ChangeList:
    """The page's carriers, each with its calls of the health period (one journal read for the page)."""
    carriers = list(changelist.result_list)
    now = timezone.now()
    figures = carrier_call_figures(carriers=[c.slug for c in carriers], since=now - HEALTH_PERIOD, until=now)
    for carrier in carriers:
        carrier.call_figures = figures[carrier.slug]
    changelist.result_list = carriers
    return changelist


def _figures(carrier: Carrier) -> CallFigures:
    return getattr(carrier, "call_figures", None) or CallFigures()


def _breaker_state(carrier: Carrier) -> str:
    return Breaker(carrier).state().replace("_", "-")


@admin.display(description="MCC-MNC")
def mcc_mnc(carrier: Carrier) -> str:
    return ", ".join(str(code) for code in carrier.network_codes.all())


@admin.register(Carrier)
class CarrierAdmin(AuditedAdmin):
    """The carriers PlayPay is configured to bill through; the rest of the MCC/MNC catalogue is its own view."""

    form = CarrierForm
    list_display = [
        "name",
        "slug",
        "country",
        "protocol",
        "is_active",
        "calls",
        "success_rate",
        "latency",
        "breaker",
        mcc_mnc,
    ]
    list_filter = [
        "is_active",
        "protocol",
        "supports_pin",
        "supports_one_click",
        "supports_refund",
        ("country", CountryOfConfiguredCarriersFilter),
    ]
    search_fields = ["name", "slug", "country__name", "network_codes__mcc", "network_codes__mnc"]
    list_select_related = ["country"]
    readonly_fields = ["credentials_status", "health_summary", "health_history", "created_at", "updated_at"]
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
                    "supports_downgrade_billing",
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
                ]
            },
        ),
        ("Health", {"fields": ["health_summary", "health_history"]}),
        ("Commercial", {"fields": ["revenue_share", "monthly_spend_cap"]}),
        ("History", {"fields": ["created_at", "updated_at"]}),
    ]

    def get_queryset(self, request: HttpRequest) -> Any:
        return cast(CarrierQuerySet, super().get_queryset(request)).configured().prefetch_related("network_codes")

    def get_search_results(self, request: HttpRequest, queryset: Any, search_term: str) -> tuple[Any, bool]:
        found, duplicates = super().get_search_results(request, queryset, search_term)
        if request.path == reverse("admin:autocomplete"):
            # Pickers (filters, forms) offer the carriers taking payments first, then the other configured ones.
            found = found.order_by("-is_active", "name")
        return found, duplicates

    def get_changelist_instance(self, request: HttpRequest) -> ChangeList:
        return _with_call_figures(super().get_changelist_instance(request))

    @admin.display(description="calls (24 h)")
    def calls(self, carrier: Carrier) -> int:
        return _figures(carrier).calls

    @admin.display(description="answered")
    def success_rate(self, carrier: Carrier) -> str:
        rate = _figures(carrier).answered_percent
        return "—" if rate is None else f"{rate:.1f} %"

    @admin.display(description="avg latency")
    def latency(self, carrier: Carrier) -> str:
        return _figures(carrier).latency

    @admin.display(description="breaker")
    def breaker(self, carrier: Carrier) -> str:
        return _breaker_state(carrier)

    @admin.display(description="Last 24 hours")
    def health_summary(self, carrier: Carrier) -> str:
        if carrier._state.adding:
            return "—"
        now = timezone.now()
        figures = carrier_call_figures(carriers=[carrier.slug], since=now - HEALTH_PERIOD, until=now)[carrier.slug]
        breaker = _breaker_state(carrier)
        if not figures.calls:
            return f"No calls in the last 24 hours; breaker {breaker}."
        return (
            f"{figures.calls_text}: {figures.calls - figures.transport_failed} answered "
            f"({figures.answered_percent or 0:.1f} %), {figures.transport_failed} failed in transport (unreachable, "
            f"timeout, 5xx); {figures.failed} failed calls, declines included. Average latency "
            f"{figures.latency}, slowest {figures.slowest}; breaker {breaker}. The dashboard's carrier tile "
            "reads the same calls (period 24h)."
        )

    @admin.display(description="History")
    def health_history(self, carrier: Carrier) -> SafeString | str:
        if carrier._state.adding:
            return "—"
        now = timezone.now()
        hourly = carrier_call_history(carrier=carrier.slug, since=now - timedelta(hours=47), until=now, bucket="hour")
        daily = carrier_call_history(carrier=carrier.slug, since=now - timedelta(days=13), until=now, bucket="day")
        return format_html(
            "{}{}",
            health_chart(hourly, title="Last 48 hours, per hour (UTC)", label="%H:00"),
            health_chart(daily, title="Last 14 days, per day (UTC)", label="%d %b"),
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
        reason = self.action_reason(request)
        if reason is None:
            return
        done = 0
        for carrier in queryset:
            try:
                set_carrier_active(carrier=carrier, active=active, reason=reason)
            except CarrierNotReady as refused:
                self.record(request, carrier, action, reason, f"refused: {refused.detail}")
                self.message_user(request, refused.detail, messages.ERROR)
                continue
            self.record(request, carrier, action, reason, "done")
            done += 1
        if done:
            self.message_user(request, f"{done} carrier(s) {action}d.")

    def changed_fields(self, form: Any) -> list[str]:
        changed = [f for f in super().changed_fields(form) if f not in ("new_credentials", "clear_credentials")]
        if form.cleaned_data.get("new_credentials") is not None or form.cleaned_data.get("clear_credentials"):
            changed.append("credentials")  # that they changed, never what they are
        return changed

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
        if result.outcome == Outcome.SUCCEEDED:
            summary = f"connection OK: {result.raw_message or result.raw_code}"
        else:
            summary = f"connection failed ({result.error_code}, {result.raw_code}): {result.raw_message}"
        record_staff_action(
            user=_staff(request), action="test_connection", target=carrier, reason="", outcome=summary[:255]
        )
        ok = result.outcome == Outcome.SUCCEEDED
        self.message_user(request, f"{carrier.name}: {summary}", level=messages.SUCCESS if ok else messages.ERROR)
        return HttpResponseRedirect(reverse("admin:carriers_carrier_change", args=[carrier.pk]))


class OnboardingForm(CarrierForm):
    """What makes a catalogue operator a configured carrier: the protocol it speaks and where to reach it."""

    class Meta:
        model = OperatorCatalogue
        fields = ["name", "slug", "protocol", "endpoint"]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if cleaned.get("protocol") == Protocol.SANDBOX:
            self.add_error("protocol", "Choose the protocol the carrier speaks; the sandbox is a test carrier.")
        elif not cleaned.get("endpoint"):
            self.add_error("endpoint", "Give the base URL of the carrier's API.")
        return cleaned


@admin.register(OperatorCatalogue)
class OperatorCatalogueAdmin(AuditedAdmin):
    """The MCC/MNC operators nobody has configured: a carrier is onboarded from here. Its page is the onboarding
    form (protocol, endpoint, credentials); once saved, the carrier leaves the catalogue for the carrier list,
    inactive, where its price points, capabilities and activation are set."""

    form = OnboardingForm
    list_display = ["name", "country", mcc_mnc, "configure"]
    list_filter = ["country"]
    search_fields = ["name", "slug", "country__name", "country__code", "network_codes__mcc", "network_codes__mnc"]
    list_select_related = ["country"]
    readonly_fields = ["country", "network_codes_list"]
    fieldsets = [
        (None, {"fields": ["name", "slug", "country", "network_codes_list"]}),
        ("Connection", {"fields": ["protocol", "endpoint", "new_credentials"]}),
    ]

    def get_queryset(self, request: HttpRequest) -> Any:
        return cast(CarrierQuerySet, super().get_queryset(request)).catalogue().prefetch_related("network_codes")

    # Onboarding is configuring a carrier: the carriers' permissions decide.
    def has_view_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return bool(request.user.has_perm("carriers.view_carrier") or self.has_change_permission(request, obj))

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return bool(request.user.has_perm("carriers.change_carrier"))

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # the catalogue is imported (manage.py import_carriers), not typed in

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    @admin.display(description="MCC-MNC")
    def network_codes_list(self, operator: Carrier) -> str:
        return mcc_mnc(operator)

    @admin.display(description="")
    def configure(self, operator: Carrier) -> SafeString:
        url = reverse("admin:carriers_operatorcatalogue_change", args=[operator.pk])
        return format_html(
            '<a class="font-medium text-primary-600 dark:text-primary-500" href="{}">Configure this operator</a>', url
        )

    def save_model(self, request: HttpRequest, obj: Carrier, form: Any, change: bool) -> None:
        carrier = onboard_carrier(carrier=obj, reason=form.cleaned_data[REASON])
        record_staff_action(
            user=_staff(request),
            action="onboard",
            target=carrier,
            reason=form.cleaned_data[REASON],
            outcome=f"configured from the catalogue: {carrier.protocol} at {carrier.endpoint}"[:255],
        )

    def response_change(self, request: HttpRequest, obj: Carrier) -> HttpResponse:
        self.message_user(
            request,
            f"{obj.name} is configured (inactive). Run Test connection, add its price points and number "
            "prefixes, then activate it.",
            messages.SUCCESS,
        )
        return HttpResponseRedirect(reverse("admin:carriers_carrier_change", args=[obj.pk]))


@admin.register(PricePoint)
class PricePointAdmin(AuditedAdmin):
    form = PricePointForm
    list_display = ["code", "carrier", "price", "tax_included", "carrier_payout", "is_active"]
    list_filter = ["is_active", "currency", "tax_included", ("carrier__country", CountryOfConfiguredCarriersFilter)]
    search_fields = ["code", "carrier__name", "carrier__slug"]
    list_select_related = ["carrier"]
    autocomplete_fields = ["carrier"]
    price = money_column("amount_minor", description="price")
    carrier_payout = money_column("carrier_payout_minor", description="carrier payout")


@admin.register(NumberPrefix)
class NumberPrefixAdmin(AuditedAdmin):
    list_display = ["prefix", "carrier"]
    search_fields = ["prefix", "carrier__name", "carrier__slug"]
    list_select_related = ["carrier"]
    autocomplete_fields = ["carrier"]


def _staff(request: HttpRequest) -> AbstractBaseUser:
    user = request.user
    assert isinstance(user, AbstractBaseUser)  # the admin requires a signed-in user
    return user
