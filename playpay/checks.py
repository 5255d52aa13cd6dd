"""Deployment checks of our own, run by `manage.py check --deploy` beside Django's."""

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Tags, Warning, register


@register(Tags.security, deploy=True)
def production_is_declared(**_: Any) -> list[CheckMessage]:
    """A deployment checked for production that does not say it is one is not refused the sandbox."""
    if settings.PLAYPAY_ENV == "production":
        return []
    return [
        Warning(
            f"PLAYPAY_ENV is {settings.PLAYPAY_ENV!r}: a production deployment sets PLAYPAY_ENV=production, "
            "which refuses to start with the sandbox (fake carriers, PIN 1234) on.",
            hint="Set PLAYPAY_ENV=production on every production process (web, workers, beat).",
            id="playpay.W001",
        )
    ]
