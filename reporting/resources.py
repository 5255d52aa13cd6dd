"""django-import-export resources: the columns of the finance exports, and the reading of settlement files.

Exports ask for native values (`force_native_type=True`); the CSV and XLSX writers in
`playpay.tables` decide how each type is written.
"""

import re
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from django.core.exceptions import ValidationError
from import_export import resources, widgets
from import_export.fields import Field

from payments.models import LedgerLine, Payment, Refund
from playpay.money import UnknownCurrency, currency_exponent, to_major
from playpay.redaction import mask_msisdn
from reporting.models import SettlementFile, SettlementLine


class UtcDateTimeWidget(widgets.DateTimeWidget):  # type: ignore[misc]  # import-export is untyped
    """Times in UTC whatever TIME_ZONE says; spreadsheets get naive UTC datetimes (XLSX has no zones)."""

    def render(self, value: Any, obj: Any = None, **kwargs: Any) -> Any:
        if not isinstance(value, datetime):
            return None if kwargs.get("force_native_type") else ""
        utc = value.astimezone(UTC)
        if kwargs.get("force_native_type"):
            return utc.replace(tzinfo=None)
        return utc.strftime("%Y-%m-%d %H:%M:%S")


def _text(attribute: str, column: str) -> Field:
    return Field(attribute=attribute, column_name=column, widget=widgets.CharWidget())


def _number(attribute: str, column: str) -> Field:
    return Field(attribute=attribute, column_name=column, widget=widgets.IntegerWidget())


def _time(attribute: str, column: str) -> Field:
    return Field(attribute=attribute, column_name=column, widget=UtcDateTimeWidget())


class ExportResource(resources.ModelResource):  # type: ignore[misc]
    """Export-only: rows are read with `.iterator(chunk_size=…)` and never all held at once."""

    class Meta:
        chunk_size = 2000

    def select(self, queryset: Any) -> Any:
        """The joins the columns need."""
        return queryset

    def headers(self) -> list[str]:
        return list(self.get_export_headers())

    def values(self, instance: Any) -> list[Any]:
        return list(self.export_resource(instance, force_native_type=True))

    def dehydrate_amount(self, row: Any) -> Decimal:
        """Every export's `amount` column: the row's amount in major units of its currency."""
        return to_major(row.amount_minor, row.currency)


class TransactionResource(ExportResource):
    payment_id = _text("public_id", "payment_id")
    created_at = _time("created_at", "created_at_utc")
    app = _text("app__name", "app")
    carrier = _text("carrier__slug", "carrier")
    country = _text("carrier__country_id", "country")
    msisdn = Field(column_name="msisdn_masked")
    price_point = _text("price_point__code", "price_point")
    amount_minor = _number("amount_minor", "amount_minor")
    currency = _text("currency", "currency")
    amount = Field(column_name="amount")
    status = _text("status", "status")
    carrier_reference = _text("carrier_reference", "carrier_reference")
    refunded_minor = _number("refunded_minor", "refunded_minor")

    class Meta(ExportResource.Meta):
        model = Payment
        fields = (
            "payment_id",
            "created_at",
            "app",
            "carrier",
            "country",
            "msisdn",
            "price_point",
            "amount_minor",
            "currency",
            "amount",
            "status",
            "carrier_reference",
            "refunded_minor",
        )
        export_order = fields

    def select(self, queryset: Any) -> Any:
        return queryset.select_related("app", "carrier", "price_point")

    def dehydrate_msisdn(self, payment: Payment) -> str:
        return mask_msisdn(payment.msisdn)


class RefundResource(ExportResource):
    refund_id = _text("public_id", "refund_id")
    payment_id = _text("payment__public_id", "payment_id")
    created_at = _time("created_at", "created_at_utc")
    completed_at = _time("completed_at", "completed_at_utc")
    app = _text("payment__app__name", "app")
    carrier = _text("payment__carrier__slug", "carrier")
    country = _text("payment__carrier__country_id", "country")
    amount_minor = _number("amount_minor", "amount_minor")
    currency = _text("currency", "currency")
    amount = Field(column_name="amount")
    status = _text("status", "status")
    via_carrier = Field(attribute="via_carrier", column_name="via_carrier", widget=widgets.BooleanWidget())
    carrier_reference = _text("carrier_reference", "carrier_reference")
    reason = _text("reason", "reason")
    requested_by = _text("requested_by", "requested_by")

    class Meta(ExportResource.Meta):
        model = Refund
        fields = (
            "refund_id",
            "payment_id",
            "created_at",
            "completed_at",
            "app",
            "carrier",
            "country",
            "amount_minor",
            "currency",
            "amount",
            "status",
            "via_carrier",
            "carrier_reference",
            "reason",
            "requested_by",
        )
        export_order = fields

    def select(self, queryset: Any) -> Any:
        return queryset.select_related("payment__app", "payment__carrier")


class LedgerLineResource(ExportResource):
    entry_id = _number("entry_id", "entry_id")
    kind = _text("entry__kind", "entry_kind")
    payment_id = _text("entry__payment__public_id", "payment_id")
    account = _text("account", "account")
    amount_minor = _number("amount_minor", "amount_minor")
    currency = _text("currency", "currency")
    amount = Field(column_name="amount")
    created_at = _time("entry__created_at", "created_at_utc")

    class Meta(ExportResource.Meta):
        model = LedgerLine
        fields = ("entry_id", "kind", "payment_id", "account", "amount_minor", "currency", "amount", "created_at")
        export_order = fields

    def select(self, queryset: Any) -> Any:
        return queryset.select_related("entry__payment")


# --- Settlement files --------------------------------------------------------

_WHOLE = re.compile(r"^[+-]?\d+$")
_DECIMAL = re.compile(r"^[+-]?\d+(\.\d+)?$")


def _strip(value: Any) -> Any:
    return value.strip() if isinstance(value, str) else value


def _is_blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


class ReferenceWidget(widgets.CharWidget):  # type: ignore[misc]
    """Spreadsheets turn numeric references into numbers: 123456.0 is read back as "123456"."""

    def clean(self, value: Any, row: Any = None, **kwargs: Any) -> str:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        return "" if value is None else str(value).strip()


class WholeNumberWidget(widgets.IntegerWidget):  # type: ignore[misc]
    """Minor units: a whole number, nothing rounded or truncated (import-export's IntegerWidget truncates 1.5)."""

    def clean(self, value: Any, row: Any = None, **kwargs: Any) -> int | None:
        value = _strip(value)
        if _is_blank(value):
            return None
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, int) or (isinstance(value, str) and _WHOLE.match(value)):
            return int(value)
        raise ValueError(f"{value!r} is not a whole number of minor units")


class CurrencyWidget(widgets.CharWidget):  # type: ignore[misc]
    def clean(self, value: Any, row: Any = None, **kwargs: Any) -> str:
        return "" if value is None else str(value).strip().upper()


class IsoDateWidget(widgets.DateWidget):  # type: ignore[misc]
    """Only unambiguous dates: ISO 8601, or a date cell of the spreadsheet. Never 03/04 (March or April?)."""

    def __init__(self) -> None:
        super().__init__()
        self.formats = ("%Y-%m-%d", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%S%z")

    def clean(self, value: Any, row: Any = None, **kwargs: Any) -> Any:
        try:
            return super().clean(_strip(value), row, **kwargs)
        except ValueError:
            raise ValueError(f"{value!r} is not a date written as YYYY-MM-DD") from None


def minor_units(amount: Any, currency: str) -> int:
    """An amount in major units (`0.99`) as minor units of the currency (`99`), refusing any rounding."""
    text = str(_strip(amount)) if not isinstance(amount, float) else repr(amount)
    if _is_blank(amount) or not _DECIMAL.match(text):
        raise ValueError(f"{amount!r} is not an amount (digits, a decimal point, no thousands separators)")
    try:
        exponent = currency_exponent(currency)
    except UnknownCurrency as exc:
        raise ValueError("cannot be read without a valid currency") from exc
    try:
        minor = Decimal(text).scaleb(exponent)
    except InvalidOperation as exc:
        raise ValueError(f"{amount!r} is not an amount") from exc
    if minor != minor.to_integral_value():
        raise ValueError(f"{amount!r} has more decimals than {currency} has ({exponent})")
    return int(minor)


class SettlementLineResource(resources.ModelResource):  # type: ignore[misc]
    """Reads the lines of one settlement file; `import_data(..., settlement_file=...)` says which."""

    carrier_reference = Field(attribute="carrier_reference", column_name="carrier_reference", widget=ReferenceWidget())
    amount_minor = Field(attribute="amount_minor", column_name="amount_minor", widget=WholeNumberWidget())
    currency = Field(attribute="currency", column_name="currency", widget=CurrencyWidget())
    date = Field(attribute="date", column_name="date", widget=IsoDateWidget())

    class Meta:
        model = SettlementLine
        fields = ("carrier_reference", "amount_minor", "currency", "date")
        import_order = fields
        force_init_instance = True  # every row is a new line; never look one up
        clean_model_instances = True  # the model's validators (currency code, required values) apply
        use_bulk = True
        batch_size = 1000
        skip_diff = True

    def after_init_instance(self, instance: SettlementLine, new: bool, row: Any, **kwargs: Any) -> None:
        settlement_file: SettlementFile = kwargs["settlement_file"]
        instance.file = settlement_file
        instance.row_number = kwargs["row_number"]
        instance.raw = {str(key): value for key, value in row.items() if key}

    def import_instance(self, instance: SettlementLine, row: Any, **kwargs: Any) -> None:
        errors: dict[str, Any] = {}
        try:
            super().import_instance(instance, row, **kwargs)
        except ValidationError as error:
            errors = error.update_error_dict(errors)
        if "amount_minor" not in row:  # the file gives `amount` in major units instead
            try:
                instance.amount_minor = minor_units(row.get("amount"), instance.currency)
            except ValueError as error:
                errors["amount"] = ValidationError(str(error), code="invalid")
                instance.amount_minor = 0  # the row is refused; this only keeps `amount_minor` out of the report
        if errors:
            raise ValidationError(errors)

    def validate_instance(
        self, instance: SettlementLine, import_validation_errors: Any = None, validate_unique: bool = True
    ) -> None:
        errors = dict(import_validation_errors or {})
        try:
            # Field checks only: the file's lines are new by construction, so no query per row for uniqueness.
            instance.full_clean(exclude=list(errors), validate_unique=False, validate_constraints=False)
        except ValidationError as error:
            errors = error.update_error_dict(errors)
        if errors:
            raise ValidationError(errors)

    def skip_row(self, instance: Any, original: Any, row: Any, import_validation_errors: Any = None) -> bool:
        return all(_is_blank(value) for value in row.values())  # blank lines, e.g. at the end of a sheet
