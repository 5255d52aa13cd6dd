"""PlayPay project package: settings, URLs, Celery app, API authentication and errors."""

from playpay.celery import app as celery_app

__all__ = ["celery_app"]
