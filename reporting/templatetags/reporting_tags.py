from typing import Any

from django import template

from reporting.models import Dashboard
from reporting.selectors import visible_dashboards

register = template.Library()


@register.simple_tag(takes_context=True)
def dashboards_for(context: dict[str, Any]) -> list[Dashboard]:
    return visible_dashboards(context["request"].user)
