import hashlib
import uuid
from decimal import Decimal

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q
from simple_history.models import HistoricalRecords

REVENUE_SHARE_RANGE = "The app's revenue share is a fraction from 0 to 1 (0.85 for 85 %)."


class App(models.Model):
    """A game backend that calls the API."""

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    name = models.CharField(max_length=100, unique=True)
    webhook_url = models.URLField(blank=True, help_text="Where PlayPay sends payment webhooks.")
    is_active = models.BooleanField(default=True)
    rate_limit_per_minute = models.PositiveIntegerField(
        null=True, blank=True, help_text="API requests per minute; empty for the platform default."
    )
    revenue_share = models.DecimalField(
        max_digits=5,
        decimal_places=4,
        default=Decimal("0.8500"),
        help_text="The app's share of what remains after tax and the carrier's share, 0 to 1.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    history = HistoricalRecords()

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=Q(revenue_share__gte=0) & Q(revenue_share__lte=1),
                name="app_revenue_share_range",
                violation_error_message=REVENUE_SHARE_RANGE,
            )
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if self.revenue_share is not None and not 0 <= self.revenue_share <= 1:
            raise ValidationError({"revenue_share": REVENUE_SHARE_RANGE})

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def effective_rate_limit(self) -> int:
        return self.rate_limit_per_minute or settings.API_RATE_LIMIT_PER_MINUTE


class ApiKey(models.Model):
    """An app's API key. Only a hash is stored; the key is shown once, when it is issued."""

    app = models.ForeignKey(App, on_delete=models.CASCADE, related_name="api_keys")
    prefix = models.CharField(max_length=16, unique=True, editable=False)
    key_hash = models.CharField(max_length=64, editable=False)
    label = models.CharField(max_length=100, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    history = HistoricalRecords(excluded_fields=["key_hash"])

    class Meta:
        verbose_name = "API key"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.app})"

    @staticmethod
    def hash(raw_key: str) -> str:
        # Keys are 256-bit random: a fast hash is enough, no password stretching needed.
        return hashlib.sha256(raw_key.encode()).hexdigest()

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None
