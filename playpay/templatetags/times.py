"""`{{ moment|utc }}`: a moment as staff read it on every page, "2026-12-04 21:59:17 UTC" (playpay.times)."""

from datetime import datetime

from django import template

from playpay.times import utc_text

register = template.Library()


@register.filter
def utc(moment: datetime | None) -> str:
    return utc_text(moment)
