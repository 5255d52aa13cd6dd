"""The columns of the finance exports, and the reading of settlement files (django-import-export).

An export's columns are declared once (`ExportColumns`); each column's kind says how its value is
written, in Python (`python_value`, then `playpay.tables` for CSV or XLSX) and in PostgreSQL
(`sql_value`, for COPY), so that both give the same file.
"""

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from functools import cache
from typing import Any

import pycountry
from django.core.exceptions import ValidationError
from django.db.models import (
    BigIntegerField,
    BooleanField,
    Case,
    CharField,
    DateTimeField,
    Expression,
    F,
    Model,
    OuterRef,
    Q,
    Subquery,
    Sum,
    UUIDField,
    Value,
    When,
)
from django.db.models.functions import Cast, Coalesce
from import_export import resources, widgets
from import_export.fields import Field

from payments.figures import FIGURES, figure_sums, line_part
from payments.models import LedgerEntry, LedgerLine, MoneyOperation, Payment, PaymentStatus, Refund, Reversal
from playpay.money import UnknownCurrency, currency_exponent, to_major
from playpay.redaction import mask_msisdn, sql_mask_msisdn
from playpay.tables import sql_csv_text
from reporting.models import SettlementFile, SettlementLine
from subscriptions.models import PAYMENT_METADATA_KEY, SubscriptionCharge


class Kind(StrEnum):
    """How a column's value is written: the same value in Python (`python_value`) and in SQL (`sql_value`)."""

    TEXT = "text"
    INTEGER = "integer"
    MONEY = "money"  # major units of the row's currency, from minor units
    TIME = "time"  # UTC, naive in XLSX (no zones there), `YYYY-MM-DD HH:MM:SS` in CSV
    BOOLEAN = "boolean"
    MSISDN = "msisdn"  # masked


@dataclass(frozen=True)
class Column:
    header: str
    source: str  # the ORM path of the value
    kind: Kind = Kind.TEXT
    currency: str = ""  # money: the ORM path of the currency


@dataclass(frozen=True)
class ExportColumns:
    """The columns of one export, the single place that says what it contains: both the rows formatted in
    Python (SQLite, XLSX) and the CSV PostgreSQL writes itself (COPY) are made from it."""

    model: type[Model]
    created: str  # the ORM path of the row's time, which the period filters
    payment: str  # the ORM path to the payment ("" for payments themselves), which the other filters follow
    columns: tuple[Column, ...]
    # Values computed per row (flags, a time), added to the queryset under these names; the columns read them
    # like fields, and both the Python rows and the COPY select them from the same query.
    annotations: Callable[[], dict[str, Any]] = dict
    # Values summed over the row's ledger lines (the figures...), read like fields as well.
    ledger: "LedgerValues | None" = None

    @property
    def headers(self) -> list[str]:
        return [column.header for column in self.columns]

    @property
    def sources(self) -> list[str]:
        """Every ORM path read, once each, in a stable order."""
        paths = [path for column in self.columns for path in (column.source, column.currency) if path]
        return list(dict.fromkeys(paths))


def _where(payment: str) -> tuple[Column, ...]:
    """The app, carrier and country of the payment at the ORM path prefix `payment`."""
    return (
        Column("app", f"{payment}app__name"),
        Column("carrier", f"{payment}carrier__slug"),
        Column("country", f"{payment}carrier__country_id"),
    )


# An amount in minor units, its currency, and the same amount in major units.
_AMOUNT = (
    Column("amount_minor", "amount_minor", Kind.INTEGER),
    Column("currency", "currency"),
    Column("amount", "amount_minor", Kind.MONEY, currency="currency"),
)

# --- The ledger's figures of a row ----------------------------------------------------------------------------
#
# The figures and their signs by account are declared once, in payments.figures: a payment keeps them (the
# transactions export reads them like fields); refunds, reversals and ledger lines are read from their lines.

# The carrier's view of the same lines, for the per-carrier settlement report: what it collected for us (its
# gross: without what the platform paid players back itself) and what it owes us after its share.
CARRIER_FIGURES: dict[str, dict[str, int]] = {
    "carrier_gross": {"carrier_receivable": 1, "carrier_share": 1},
    "net_due": {"carrier_receivable": 1},
}


def line_figure(name: str) -> Expression:
    """The part of the figure `name` (of FIGURES or CARRIER_FIGURES) in one ledger line."""
    return line_part(FIGURES.get(name) or CARRIER_FIGURES[name])


@dataclass(frozen=True)
class LedgerValues:
    """Values of a row summed over the ledger lines it names: the lines whose `line_key` is the
    row's `row_key`, of the row's payment month (`row_month`), that `lines` selects.

    Both export paths read the same aggregates of the same lines. Rows formatted in Python get them as
    correlated subqueries (`subqueries`, a few rows at a time: SQLite, small exports); the COPY joins the
    lines grouped by key once (`grouped`), which reads each ledger line once instead of probing per row.
    """

    line_key: str  # the ORM path on LedgerLine to the row: "entry__payment_id", "entry__refund_id"
    row_key: str  # the ORM path on the row it equals: "pk", "payment_id"
    row_month: str  # the ORM path of the row's payment month: "created_at", "payment_created_at"
    aggregates: Callable[[], dict[str, Sum]]  # name -> a sum over ledger lines (0 when there is none)
    kinds: tuple[str, ...] = ()  # only lines of entries of these kinds; () for all

    def _lines(self) -> Q:
        return Q(entry__kind__in=self.kinds) if self.kinds else Q()

    def names(self) -> list[str]:
        return list(self.aggregates())

    def subqueries(self) -> dict[str, Any]:
        """Each value as a correlated subquery over the row's lines; PostgreSQL reads the row's month only."""
        month = OuterRef(self.row_month)
        lines = LedgerLine.objects.filter(
            self._lines(),
            payment_created_at=month,
            entry__payment_created_at=month,
            **{self.line_key: OuterRef(self.row_key)},
        ).order_by()
        values: dict[str, Any] = {}
        for name, aggregate in self.aggregates().items():
            one = lines.values("payment_created_at").annotate(value=aggregate).values("value")
            values[name] = Cast(Coalesce(Subquery(one), Value(0)), BigIntegerField())
        return values

    def grouped(
        self,
        *,
        months_to: datetime | None,
        keys_from: int | None = None,
        keys_before: int | None = None,
    ) -> Any:
        """The values of every key at once (columns `k`, `m` and the names): the lines grouped by key and month,
        of payment months before `months_to` when given (only those partitions are read), and of keys from
        `keys_from` to before `keys_before` when given (a part of an export's rows)."""
        lines = LedgerLine.objects.filter(self._lines())
        if keys_from is not None:
            lines = lines.filter(**{f"{self.line_key}__gte": keys_from})
        if keys_before is not None:
            lines = lines.filter(**{f"{self.line_key}__lt": keys_before})
        if months_to is not None:
            lines = lines.filter(payment_created_at__lt=months_to, entry__payment_created_at__lt=months_to)
        return lines.order_by().values(k=F(self.line_key), m=F("payment_created_at")).annotate(**self.aggregates())


def _money(header: str, source: str, currency: str = "currency") -> tuple[Column, Column]:
    """An amount in minor units for machines, beside it in major units of the row's currency for people."""
    return Column(f"{header}_minor", source, Kind.INTEGER), Column(header, source, Kind.MONEY, currency=currency)


def _figure_columns(currency: str = "currency") -> tuple[Column, ...]:
    return tuple(column for name in FIGURES for column in _money(name, f"{name}_minor", currency))


REFUND_LEDGER = LedgerValues(
    line_key="entry__refund_id", row_key="pk", row_month="payment_created_at", aggregates=figure_sums
)
REVERSAL_LEDGER = LedgerValues(
    line_key="entry__payment_id",
    row_key="payment_id",
    row_month="payment_created_at",
    aggregates=figure_sums,
    kinds=(LedgerEntry.Kind.REVERSAL,),
)

COLLECTED = (PaymentStatus.SUCCEEDED, PaymentStatus.PARTIALLY_REFUNDED)


def _subscription_charge() -> dict[str, Any]:
    """A payment's subscription charge (an opt-in's first period or a renewal), if it is one: the subscription
    and the period it pays for, read through the charges' (payment, month) index; empty for one-off payments.
    Only payments whose metadata names a subscription are looked up (every charge's payment does): a month of
    one-off payments costs no lookup per row."""
    charge = SubscriptionCharge.objects.filter(payment_id=OuterRef("pk"), payment_created_at=OuterRef("created_at"))

    def one(path: str, field: Any) -> Case:
        found = Subquery(charge.values(path)[:1], output_field=field)
        return Case(When(metadata__has_key=PAYMENT_METADATA_KEY, then=found), default=None, output_field=field)

    return {
        "subscription_public_id": one("subscription__public_id", UUIDField()),
        "subscription_charge_kind": one("kind", CharField()),
        "subscription_period_index": one("period_index", BigIntegerField()),
        "subscription_period_start": one("period_start", DateTimeField()),
        "subscription_period_end": one("period_end", DateTimeField()),
    }


def _payment_values() -> dict[str, Any]:
    return {
        **_subscription_charge(),
        "counts_as_revenue": Case(
            When(status__in=COLLECTED, then=Value(True)), default=Value(False), output_field=BooleanField()
        ),
        "reversed_minor": Case(
            When(status=PaymentStatus.REVERSED, then=F("amount_minor")),
            default=Value(0),
            output_field=BigIntegerField(),
        ),
    }


def _operation_values() -> dict[str, Any]:
    """A refund's or a reversal's: whether it moved money, and when its payment was charged."""
    charge = LedgerEntry.objects.filter(
        payment_id=OuterRef("payment_id"),
        payment_created_at=OuterRef("payment_created_at"),
        kind=LedgerEntry.Kind.CHARGE,
    )
    return {
        "counts_as_revenue": Case(
            When(status=MoneyOperation.Status.SUCCEEDED, then=Value(True)),
            default=Value(False),
            output_field=BooleanField(),
        ),
        "charged_at": Subquery(charge.values("created_at")[:1], output_field=DateTimeField()),
    }


def _ledger_line_values() -> dict[str, Any]:
    return {
        **{f"{name}_minor": line_figure(name) for name in FIGURES},
        "counts_as_revenue": Value(True, output_field=BooleanField()),  # a posted line is money that moved
    }


TRANSACTIONS = ExportColumns(
    model=Payment,
    created="created_at",
    payment="",
    annotations=_payment_values,
    columns=(
        Column("payment_id", "public_id"),
        Column("created_at_utc", "created_at", Kind.TIME),
        *_where(""),
        Column("msisdn_masked", "msisdn", Kind.MSISDN),
        Column("price_point", "price_point__code"),
        *_AMOUNT,
        Column("status", "status"),
        Column("failure_code", "failure_code"),
        Column("carrier_reference", "carrier_reference"),
        Column("counts_as_revenue", "counts_as_revenue", Kind.BOOLEAN),
        *_money("refunded", "paid_back_minor"),
        *_money("reversed", "reversed_minor"),
        *_figure_columns(),
        Column("charged_at_utc", "charged_at", Kind.TIME),
        Column("refunded_at_utc", "refunded_at", Kind.TIME),
        Column("reversed_at_utc", "reversed_at", Kind.TIME),
        Column("subscription_id", "subscription_public_id"),
        Column("subscription_charge", "subscription_charge_kind"),
        Column("period_index", "subscription_period_index", Kind.INTEGER),
        Column("period_start_utc", "subscription_period_start", Kind.TIME),
        Column("period_end_utc", "subscription_period_end", Kind.TIME),
    ),
)


def _operation_columns(
    *, operation: str, id_column: tuple[Column, ...], amount: tuple[Column, ...], currency: str = "currency"
) -> tuple[Column, ...]:
    """The columns refunds and reversals share: the payment, the money, the outcome, the ledger's figures."""
    return (
        *id_column,
        Column("payment_id", "payment__public_id"),
        Column("created_at_utc", "created_at", Kind.TIME),
        Column("completed_at_utc", "completed_at", Kind.TIME),
        *_where("payment__"),
        *amount,
        Column("status", "status"),
        Column("failure_code", "failure_code"),
        Column("counts_as_revenue", "counts_as_revenue", Kind.BOOLEAN),
        Column("via_carrier", "via_carrier", Kind.BOOLEAN),
        *_figure_columns(currency),
        Column("charged_at_utc", "charged_at", Kind.TIME),
        Column(f"{operation}_at_utc", "completed_at", Kind.TIME),
        Column("reason", "reason"),
        Column("requested_by", "requested_by"),
    )


REFUNDS = ExportColumns(
    model=Refund,
    created="created_at",
    payment="payment__",
    annotations=_operation_values,
    ledger=REFUND_LEDGER,
    columns=_operation_columns(
        operation="refunded",
        id_column=(Column("refund_id", "public_id"),),
        amount=(*_AMOUNT, Column("carrier_reference", "carrier_reference")),
    ),
)
REVERSALS = ExportColumns(
    model=Reversal,
    created="created_at",
    payment="payment__",
    annotations=_operation_values,
    ledger=REVERSAL_LEDGER,
    columns=_operation_columns(
        operation="reversed",
        id_column=(Column("reversal_id", "id", Kind.INTEGER),),
        amount=(
            Column("amount_minor", "payment__amount_minor", Kind.INTEGER),
            Column("currency", "payment__currency"),
            Column("amount", "payment__amount_minor", Kind.MONEY, currency="payment__currency"),
        ),
        currency="payment__currency",
    ),
)
LEDGER = ExportColumns(
    model=LedgerLine,
    created="entry__created_at",
    payment="entry__payment__",
    annotations=_ledger_line_values,
    columns=(
        Column("entry_id", "entry_id", Kind.INTEGER),
        Column("entry_kind", "entry__kind"),
        Column("payment_id", "entry__payment__public_id"),
        Column("account", "account"),
        *_AMOUNT,
        Column("counts_as_revenue", "counts_as_revenue", Kind.BOOLEAN),
        *_figure_columns(),
        Column("created_at_utc", "entry__created_at", Kind.TIME),
    ),
)


def python_value(column: Column, value: Any, currency: Any = None) -> Any:
    """The native value written for `column` (ints, Decimals, naive UTC datetimes, text, None)."""
    if value is None:
        return None
    if column.kind == Kind.MONEY:
        return to_major(value, currency)
    if column.kind == Kind.TIME:
        return value.astimezone(UTC).replace(tzinfo=None, microsecond=0)  # whole seconds, as people read them
    if column.kind == Kind.MSISDN:
        return mask_msisdn(value)
    if column.kind == Kind.TEXT:
        return str(value)
    return value


def sql_minor_unit(currency: str) -> str:
    """One minor unit of the currency in `currency` (exponents from the same table `to_major` reads), as a
    numeric whose scale is the exponent: 0.01, 0.001, 1. An amount in minor units times it is the amount in
    major units with the currency's decimals, as `to_major` gives it (a product, not a division and a round)."""
    cases = " ".join(f"WHEN '{code}' THEN {_unit(exponent)}" for code, exponent in sorted(_odd_exponents().items()))
    default = _unit(DEFAULT_EXPONENT)
    return f"(CASE {currency} {cases} ELSE {default} END)" if cases else default


def _unit(exponent: int) -> str:
    return f"0.{'0' * (exponent - 1)}1" if exponent else "1"


DEFAULT_EXPONENT = 2


@cache
def _odd_exponents() -> dict[str, int]:
    exponents = {}
    for currency in pycountry.currencies:
        try:
            exponent = currency_exponent(currency.alpha_3)
        except UnknownCurrency:
            continue
        if exponent != DEFAULT_EXPONENT:
            exponents[currency.alpha_3] = exponent
    return exponents


def _xml_text(value: str) -> str:
    """A text as XML character data that COPY's CSV writer leaves unquoted: no line breaks, no controls."""
    escaped = f"replace(replace(replace({value}, '&', '&amp;'), '<', '&lt;'), '>', '&gt;')"
    lines = f"replace(replace({escaped}, E'\\r', '&#13;'), E'\\n', '&#10;')"
    return f"regexp_replace({lines}, E'[\\x01-\\x08\\x0b\\x0c\\x0e-\\x1f]', E'\\uFFFD', 'g')"


def sql_xlsx_cell(column: Column, value: str, currency: str = "", *, unit: str = "") -> str:
    """The `<c>` element of a sheet row (SpreadsheetML) for `python_value(...)`, as a PostgreSQL expression.
    Texts are inline strings (never formulas); times are serial dates in style 1 (`playpay.tables`)."""
    if column.kind == Kind.MONEY:
        number = sql_value(column, value, currency, unit=unit)
    elif column.kind == Kind.INTEGER:
        number = f"{value}::text"
    elif column.kind == Kind.TIME:
        serial = f"(extract(epoch FROM date_trunc('second', {value})) / 86400 + 25569)::text"
        return f"CASE WHEN {value} IS NULL THEN '<c/>' ELSE '<c s=''1''><v>' || {serial} || '</v></c>' END"
    elif column.kind == Kind.BOOLEAN:
        true, false = "'<c t=''b''><v>1</v></c>'", "'<c t=''b''><v>0</v></c>'"
        return f"CASE WHEN {value} THEN {true} WHEN NOT {value} THEN {false} ELSE '<c/>' END"
    else:
        text = sql_mask_msisdn(value) if column.kind == Kind.MSISDN else f"{value}::text"
        return (
            f"CASE WHEN coalesce({text}, '') = '' THEN '<c/>' "
            f"ELSE '<c t=''inlineStr''><is><t xml:space=''preserve''>' || {_xml_text(text)} || '</t></is></c>' END"
        )
    return f"CASE WHEN {value} IS NULL THEN '<c/>' ELSE '<c><v>' || {number} || '</v></c>' END"


def sql_value(column: Column, value: str, currency: str = "", *, unit: str = "") -> str:
    """`csv_text(python_value(...))` as a PostgreSQL expression over the SQL expressions of the sources.
    `unit`: the currency's minor unit (`sql_minor_unit(currency)`) when the query has it already."""
    if column.kind == Kind.MONEY:
        return f"({value}::numeric * {unit or sql_minor_unit(currency)})::text"
    if column.kind == Kind.TIME:
        return f"to_char({value} AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')"
    if column.kind == Kind.BOOLEAN:
        return f"CASE WHEN {value} THEN 'true' WHEN NOT {value} THEN 'false' END"
    if column.kind == Kind.INTEGER:
        return f"{value}::text"
    if column.kind == Kind.MSISDN:
        return sql_csv_text(f"({sql_mask_msisdn(value)})")
    return sql_csv_text(f"{value}::text")


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
