"""`{{ amount_minor|money:currency }}`: an amount in minor units as a person reads it ("£9.99", "¥100")."""

from typing import Any

from django import template

from playpay.money import UnknownCurrency, format_money

register = template.Library()


@register.filter
def money(amount_minor: Any, currency: str) -> str:
    if amount_minor is None or amount_minor == "":
        return ""
    try:
        return format_money(int(amount_minor), currency)
    except (UnknownCurrency, TypeError, ValueError):
        return f"{amount_minor} {currency} (minor units)"  # an unknown code, e.g. from a carrier's file
