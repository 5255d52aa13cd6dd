"""Money helpers: integer minor units and ISO 4217 codes; exponents come from the currency."""

from decimal import Decimal

import pycountry
from babel.numbers import format_currency, get_currency_precision


class UnknownCurrency(ValueError):
    pass


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


def format_money(amount_minor: int, currency: str, locale: str = "en_US") -> str:
    return str(format_currency(to_major(amount_minor, currency), currency, locale=locale))
