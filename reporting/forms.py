"""Admin forms of reporting: what to export, and which settlement file to import."""

from typing import Any

from django import forms
from django.core.validators import FileExtensionValidator

from carriers.models import Carrier, Country
from playpay.admin_base import check_period
from playpay.tables import TableFormat
from reporting.models import ExportKind
from reporting.services.exports import ExportFilters
from tenants.models import App

_DATE = forms.DateInput(attrs={"type": "date"})


class ExportForm(forms.Form):
    kind = forms.ChoiceField(label="What", choices=ExportKind.choices)
    file_format = forms.ChoiceField(label="Format", choices=TableFormat.choices, initial=TableFormat.XLSX)
    date_from = forms.DateField(required=False, widget=_DATE, help_text="UTC day, included.")
    date_to = forms.DateField(required=False, widget=_DATE, help_text="UTC day, included.")
    carrier = forms.ModelChoiceField(
        Carrier.objects.configured().order_by("slug"), to_field_name="slug", required=False
    )
    country = forms.ModelChoiceField(
        Country.objects.filter(carriers__in=Carrier.objects.configured()).distinct(), required=False
    )
    app = forms.ModelChoiceField(App.objects.order_by("name"), to_field_name="name", required=False)

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        check_period(self, cleaned, "date_from", "date_to")
        return cleaned

    def filters(self) -> ExportFilters:
        data = self.cleaned_data
        return ExportFilters(
            date_from=data["date_from"],
            date_to=data["date_to"],
            carrier=data["carrier"].slug if data["carrier"] else "",
            country=data["country"].code if data["country"] else "",
            app=data["app"].name if data["app"] else "",
        )


class SettlementUploadForm(forms.Form):
    carrier = forms.ModelChoiceField(Carrier.objects.configured().order_by("slug"))
    file = forms.FileField(
        validators=[FileExtensionValidator(["csv", "xlsx"])],
        help_text="CSV or XLSX with the columns carrier_reference, amount_minor (or amount), currency, date.",
    )
    period_from = forms.DateField(required=False, widget=_DATE, help_text="Empty: the first date in the file.")
    period_to = forms.DateField(required=False, widget=_DATE, help_text="Empty: the last date in the file.")

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        check_period(self, cleaned, "period_from", "period_to")
        return cleaned


class SettlementReportForm(forms.Form):
    date_from = forms.DateField(widget=_DATE, help_text="UTC day, included: payments created from this day.")
    date_to = forms.DateField(widget=_DATE, help_text="UTC day, included.")
    carrier = forms.ModelChoiceField(
        # The configured carriers: the operator catalogue has hundreds that never took a payment. (Not "those
        # with payments": that reads every month of the payments table, seconds at volume.)
        Carrier.objects.configured().order_by("slug"),
        to_field_name="slug",
        required=False,
        help_text="Empty: every carrier.",
    )
    file_format = forms.ChoiceField(
        label="Format", choices=TableFormat.choices, initial=TableFormat.XLSX, required=False
    )

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        check_period(self, cleaned, "date_from", "date_to")
        return cleaned
