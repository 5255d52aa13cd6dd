"""Money helpers: integer minor units and ISO 4217 codes; exponents come from the currency.

Machines keep minor units; people read and type major units: `format_money` writes them ("£9.99",
"¥100", "1.500 KWD"), `parse_major` reads what a person typed, exactly (Decimal, never floats).
"""

from decimal import Decimal, InvalidOperation
from functools import lru_cache

import pycountry
from babel.numbers import format_currency, format_decimal, get_currency_precision, get_currency_symbol


class UnknownCurrency(ValueError):
    pass


class InvalidAmount(ValueError):
    """A typed amount that is not a positive number with at most the currency's decimals; says why."""


def validate_currency(code: str) -> str:
    """Return the upper-case ISO 4217 code, or raise UnknownCurrency."""
    normalized = (code or "").strip().upper()
    if len(normalized) != 3 or pycountry.currencies.get(alpha_3=normalized) is None:
        raise UnknownCurrency(f"{code!r} is not an ISO 4217 currency code")
    return normalized


def currency_exponent(code: str) -> int:
    return int(get_currency_precision(validate_currency(code)))


def to_major(amount_minor: int, currency: str) -> Decimal:
    return Decimal(amount_minor).scaleb(-currency_exponent(currency))


# A list shows the same few prices again and again, and babel takes most of a millisecond for each.
@lru_cache(maxsize=4096)
def format_money(amount_minor: int, currency: str, locale: str = "en_US") -> str:
    """The amount as a person reads it: the currency's symbol where it has one ("£9.99", "¥100"), else the
    number then the code ("1.500 KWD"), always with the currency's own number of decimals."""
    code = validate_currency(currency)
    major = to_major(amount_minor, code)
    if get_currency_symbol(code, locale=locale) == code:
        exponent = currency_exponent(code)
        pattern = "#,##0" + ("." + "0" * exponent if exponent else "")
        return f"{format_decimal(major, format=pattern, locale=locale)} {code}"
    return str(format_currency(major, code, locale=locale))


def currency_label(currency: str, locale: str = "en_US") -> str:
    """The currency as a form shows it beside a field: its symbol, or its code where it has none."""
    code = validate_currency(currency)
    return str(get_currency_symbol(code, locale=locale))


def parse_major(text: str, currency: str, *, allow_zero: bool = False) -> int:
    """The minor units of an amount a person typed in major units ("3", "3.00", "1,234.5"), exactly.

    Raises InvalidAmount, with a sentence for the person, for anything that is not a positive amount with
    at most the currency's decimals ("3.001" in GBP is refused, not rounded).
    """
    code = validate_currency(currency)
    exponent = currency_exponent(code)
    cleaned = (text or "").strip().replace(",", "").replace(" ", "")
    symbol = get_currency_symbol(code, locale="en_US")
    for prefix in (symbol, code):
        cleaned = cleaned.removeprefix(prefix).removesuffix(prefix)
    try:
        major = Decimal(cleaned)
    except InvalidOperation:
        raise InvalidAmount(f"Enter an amount in {code}, such as {format_money(10**exponent * 3, code)}.") from None
    if not major.is_finite() or major < 0 or (major == 0 and not allow_zero):
        raise InvalidAmount("Enter an amount of zero or more." if allow_zero else "Enter an amount above zero.")
    minor = major.scaleb(exponent)
    if minor != minor.to_integral_value():
        decimals = f"{exponent} decimal{'s' if exponent != 1 else ''}" if exponent else "no decimals"
        raise InvalidAmount(f"{code} amounts have {decimals}; {text.strip()} has more.")
    return int(minor)


def signed_money(amount_minor: int, currency: str) -> str:
    """A ledger amount with its sign: "+£0.99", "-£0.99"."""
    return ("-" if amount_minor < 0 else "+") + format_money(abs(amount_minor), currency)
