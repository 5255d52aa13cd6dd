"""Admin building blocks shared by the apps, on django-unfold: every ModelAdmin and inline derives from here.

unfold ships no type information; the type checker sees Django's own (generic) classes, which unfold's
subclass one for one, and the running admin gets unfold's.
"""

from collections.abc import Callable
from datetime import date
from functools import cache
from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib import admin
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.http import HttpRequest
from django.utils.html import format_html
from django.utils.safestring import SafeString
from unfold.paginator import InfinitePaginator

from playpay.money import InvalidAmount, UnknownCurrency, currency_exponent, currency_label, format_money, parse_major

_VALUE = "\x1f"  # stands for the row's id in the one checkbox rendered


@cache
def _checkbox_format() -> str:
    """unfold's row checkbox as its widget renders it, a format string with the row's id as its one field."""
    from unfold.admin import checkbox

    rendered = str(checkbox.render(ACTION_CHECKBOX_NAME, _VALUE)).replace("{", "{{").replace("}", "}}")
    return rendered.replace(f'value="{_VALUE}"', 'value="{}"')


def row_checkbox(pk: Any) -> SafeString:
    """The checkbox that selects a row for an action, the same markup as unfold's widget writes, without
    rendering the widget's templates for every row (that took a tenth of a 50-row list's time)."""
    return format_html(_checkbox_format(), pk)


if TYPE_CHECKING:
    from django.contrib.admin import ModelAdmin, StackedInline, TabularInline
else:
    from unfold.admin import ModelAdmin as UnfoldModelAdmin
    from unfold.admin import StackedInline, TabularInline

    class ModelAdmin(UnfoldModelAdmin):
        """unfold's, with a row checkbox that costs no template rendering."""

        @admin.display(description=UnfoldModelAdmin.action_checkbox.short_description)
        def action_checkbox(self, obj: Any) -> SafeString:
            return row_checkbox(obj.pk)


__all__ = [
    "ModelAdmin",
    "MoneyField",
    "ReadOnlyInline",
    "RecordAdmin",
    "StackedInline",
    "TabularInline",
    "money_column",
]


class ReadOnlyInline(TabularInline):  # type: ignore[type-arg]
    """An inline list of records the system writes: shown, never edited, added or deleted here."""

    extra = 0
    can_delete = False

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return self.fields or []

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class RecordAdmin(ModelAdmin):  # type: ignore[type-arg]
    """Records the system writes (payments, callbacks, deliveries…): searchable and viewable only.

    State changes go through the services (admin actions), never through a form.
    """

    # No COUNT(*) over big tables: pages load as the list is scrolled (unfold's infinite pagination), 50 rows at
    # a time, so that a list answers as fast at ten million rows as at a thousand (bench/admin_volume.py).
    show_full_result_count = False
    paginator = InfinitePaginator
    list_per_page = 50

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return [field.name for field in self.model._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def recent_values_filter(field: str, *, title: str = "", latest: int = 1000) -> type[admin.SimpleListFilter]:
    """A list filter on `field` (same query parameter as Django's own, `?field=value`) offering the values of the
    latest `latest` rows: Django's own reads every distinct value of the whole table on each page, seconds on a
    table of millions (ledger lines, webhook deliveries)."""

    class RecentValuesFilter(admin.SimpleListFilter):
        parameter_name = field

        def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
            newest = model_admin.model._default_manager.order_by("-pk").values_list(field, flat=True)[:latest]
            return [(value, value) for value in sorted(set(newest)) if value]

        def queryset(self, request: HttpRequest, queryset: Any) -> Any:
            return queryset.filter(**{field: self.value()}) if self.value() else queryset

    RecentValuesFilter.title = title or field.replace("_", " ")
    return RecentValuesFilter


def money_column(
    amount: str, *, currency: str = "currency", description: str = "amount", ordering: str | None = None
) -> Callable[[Any, Any], str]:
    """An admin column (list_display, readonly_fields) showing the row's `amount` (minor units) as a person
    reads it, in the currency named by the row's `currency` field: "£9.99", "¥100", "1.500 KWD"."""

    @admin.display(description=description, ordering=ordering or amount)
    def column(model_admin: Any, obj: Any) -> str:
        value = getattr(obj, amount)
        return "—" if value is None else format_money(value, getattr(obj, currency))

    return column


class MoneyField(forms.CharField):
    """An amount a person types in major units of `currency` ("3.00" for £3.00); cleans to minor units, exactly.

    More decimals than the currency has ("3.001" in GBP) are refused in a sentence on the field, never rounded.
    The currency may be set after the form is built (`form.fields[name].currency = ...`).
    """

    def __init__(self, *, currency: str = "", allow_zero: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.widget.attrs["maxlength"] = "32"
        self.allow_zero = allow_zero
        self.currency = currency

    @property
    def currency(self) -> str:
        return self._currency

    @currency.setter
    def currency(self, code: str) -> None:
        self._currency = code
        if code:
            try:
                exponent = currency_exponent(code)
            except UnknownCurrency:
                return
            step = "1" if exponent == 0 else "0." + "0" * (exponent - 1) + "1"
            self.widget.attrs.update({"inputmode": "decimal", "placeholder": f"{currency_label(code)} {step}"})

    def to_python(self, value: Any) -> int | None:  # type: ignore[override]
        text = super().to_python(value)
        if not text:
            return None
        if not self.currency:
            raise forms.ValidationError("Give a valid currency: the amount is read in its units.", code="invalid")
        try:
            return parse_major(text, self.currency, allow_zero=self.allow_zero)
        except (InvalidAmount, UnknownCurrency) as error:
            raise forms.ValidationError(str(error), code="invalid") from error


def check_period(form: forms.Form, cleaned: dict[str, Any], start: str, end: str) -> None:
    """A period's end on or after its start; said once, on the end field (not again above the form)."""
    first: date | None = cleaned.get(start)
    last: date | None = cleaned.get(end)
    if first and last and first > last:
        form.add_error(end, "The period ends before it starts.")
