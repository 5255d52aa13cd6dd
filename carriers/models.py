from decimal import Decimal
from typing import Any

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.db.models import Exists, F, OuterRef, Q
from simple_history.models import HistoricalRecords

from playpay.crypto import decrypt_credentials, encrypt_credentials
from playpay.money import format_money


class Country(models.Model):
    code = models.CharField("ISO 3166 alpha-2", max_length=2, primary_key=True)
    name = models.CharField(max_length=100)
    currency = models.CharField("ISO 4217 currency", max_length=3, blank=True)
    dialing_code = models.CharField(max_length=8, blank=True, help_text="Country calling code, digits only.")
    vat_rate = models.DecimalField(
        "VAT rate (%)",
        max_digits=5,
        decimal_places=2,
        default=Decimal("0"),
        validators=[MinValueValidator(Decimal("0")), MaxValueValidator(Decimal("100"))],
    )

    class Meta:
        verbose_name_plural = "countries"
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=Q(vat_rate__gte=0) & Q(vat_rate__lte=100),
                name="country_vat_rate_range",
                violation_error_message="The VAT rate is a percentage from 0 to 100.",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.code})"


class Protocol(models.TextChoices):
    """Which adapter speaks to a carrier. A new carrier on a known protocol is configuration only."""

    SANDBOX = "sandbox", "Sandbox (in-process test carrier)"
    CAMARA = "camara", "CAMARA Carrier Billing (REST/JSON, OAuth2)"
    PARLAYX = "parlayx", "Parlay X Payment (3GPP TS 29.199-6, SOAP)"
    AGGREGATOR = "aggregator", "DCB aggregator (REST, HMAC-signed, asynchronous)"


class CarrierQuerySet(models.QuerySet["Carrier"]):
    def configured(self) -> "CarrierQuerySet":
        """Carriers PlayPay has been set up to bill through: active, or given an endpoint, credentials or a
        price point. The rest is the operator catalogue (MCC/MNC reference data), to onboard from."""
        return self.filter(_configured())

    def catalogue(self) -> "CarrierQuerySet":
        """Operators of the MCC/MNC catalogue that nobody has configured yet."""
        return self.exclude(_configured())


class Carrier(models.Model):
    slug = models.SlugField(max_length=80, unique=True)
    name = models.CharField(max_length=150)
    country = models.ForeignKey(Country, on_delete=models.PROTECT, related_name="carriers")
    protocol = models.CharField(max_length=32, choices=Protocol.choices, default=Protocol.SANDBOX)
    endpoint = models.URLField(blank=True, help_text="Base URL of the carrier's API.")
    credentials_encrypted = models.TextField(blank=True, editable=False)
    connect_timeout_ms = models.PositiveIntegerField(default=2000)
    read_timeout_ms = models.PositiveIntegerField(default=10000)
    is_active = models.BooleanField(default=False, help_text="Only active carriers take payments.")
    supports_pin = models.BooleanField("PIN flow", default=True)
    supports_one_click = models.BooleanField("one-click flow", default=False)
    supports_refund = models.BooleanField("refund", default=False)
    supports_reversal = models.BooleanField("reversal", default=False)
    supports_subscriptions = models.BooleanField("subscriptions", default=False)
    supports_downgrade_billing = models.BooleanField(
        "downgrade billing",
        default=False,
        help_text="Tick only when the carrier allows it: a subscription renewal declined for insufficient funds "
        "is tried again at the plan offer's lower fallback price. Used only where PlayPay charges each renewal "
        "itself (sandbox, Parlay X, CAMARA), never where the carrier holds the schedule (the aggregator).",
    )
    deduplicates_reference_code = models.BooleanField(
        "gateway deduplicates referenceCode",
        default=False,
        help_text="Parlay X only. Tick only when the carrier has confirmed that its gateway answers a repeated "
        "chargeAmount or refundAmount with the same referenceCode as the same request (without charging or "
        "refunding again) and charges a reservation at most once. Then a charge or refund whose outcome is "
        "unknown is settled by sending it again. Unticked, nothing is sent again: it stays unknown until the "
        "carrier's settlement file settles it, and is reported when unknown too long.",
    )
    revenue_share = models.DecimalField(
        max_digits=5,
        decimal_places=4,
        default=Decimal("0.3000"),
        validators=[MinValueValidator(Decimal("0")), MaxValueValidator(Decimal("1"))],
        help_text="Share of the net amount the carrier keeps, 0 to 1.",
    )
    max_retries = models.PositiveSmallIntegerField(
        default=5, help_text="Retries of a call that did not reach the carrier, with exponential backoff."
    )
    retry_backoff_seconds = models.PositiveIntegerField(default=2, help_text="First retry delay; doubles each time.")
    insufficient_funds_retry_minutes = models.CharField(
        max_length=100,
        blank=True,
        validators=[RegexValidator(r"^(\d+(,\d+)*)?$", "Comma-separated minutes, e.g. 60,360,1440.")],
        help_text="One-click charges declined for insufficient funds are tried again after these delays "
        "(minutes, comma-separated); empty fails them at once.",
    )
    # A regulator's (or the carrier's) ceiling on what one number may be charged in a calendar month; the
    # subscription charges check it (subscriptions.services.caps), one-off payments count toward it.
    monthly_spend_cap_minor = models.PositiveBigIntegerField(
        "monthly spend cap",
        null=True,
        blank=True,
        help_text="Most one MSISDN may be charged on this carrier in a calendar month, in minor units of its "
        "country's currency; empty: no cap.",
    )
    rate_limit_per_second = models.PositiveIntegerField(default=50, help_text="Calls per second to this carrier.")
    breaker_failure_threshold = models.PositiveSmallIntegerField(
        default=5, help_text="Consecutive transport failures that open the circuit breaker."
    )
    breaker_reset_seconds = models.PositiveIntegerField(
        default=30, help_text="How long an open breaker waits before letting one trial call through."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    # Before/after values of every change, with who and why; never the credentials (write-only, encrypted).
    history = HistoricalRecords(excluded_fields=["credentials_encrypted", "updated_at"])

    objects = CarrierQuerySet.as_manager()

    class Meta:
        ordering = ["country_id", "name"]
        constraints = [
            models.CheckConstraint(
                condition=Q(revenue_share__gte=0) & Q(revenue_share__lte=1),
                name="carrier_revenue_share_range",
                violation_error_message="The carrier's revenue share is a fraction from 0 to 1 (0.3 for 30 %).",
            ),
            models.CheckConstraint(
                condition=Q(connect_timeout_ms__gt=0) & Q(read_timeout_ms__gt=0),
                name="carrier_timeouts_positive",
                violation_error_message="Timeouts must be at least 1 millisecond.",
            ),
        ]
        indexes = [models.Index(fields=["country", "is_active"])]

    def __str__(self) -> str:
        return f"{self.name} ({self.country_id})"

    def clean(self) -> None:
        # The constraints' own messages, on the fields they concern (the database checks them again).
        errors = {
            name: "Must be at least 1 millisecond: 0 would give up on every call."
            for name in ("connect_timeout_ms", "read_timeout_ms")
            if getattr(self, name) is not None and getattr(self, name) <= 0
        }
        if errors:
            raise ValidationError(errors)

    @property
    def credentials(self) -> dict[str, Any]:
        return decrypt_credentials(self.credentials_encrypted)

    @credentials.setter
    def credentials(self, value: dict[str, Any]) -> None:
        self.credentials_encrypted = encrypt_credentials(value)

    @property
    def has_credentials(self) -> bool:
        return bool(self.credentials_encrypted)

    @property
    def insufficient_funds_retry_delays(self) -> list[int]:
        """Minutes to wait before each later attempt after insufficient funds."""
        return [int(part) for part in self.insufficient_funds_retry_minutes.split(",") if part.strip()]


class OperatorCatalogue(Carrier):
    """The operators of the MCC/MNC catalogue not configured yet: where a new carrier is picked from."""

    class Meta:
        proxy = True
        verbose_name = "catalogue operator"
        verbose_name_plural = "operator catalogue"


class NetworkCode(models.Model):
    """An MCC/MNC pair (ITU-T E.212) operated by a carrier."""

    carrier = models.ForeignKey(Carrier, on_delete=models.CASCADE, related_name="network_codes")
    mcc = models.CharField("MCC", max_length=3, validators=[RegexValidator(r"^\d{3}$", "MCC is three digits.")])
    mnc = models.CharField(
        "MNC", max_length=3, validators=[RegexValidator(r"^\d{2,3}$", "MNC is two or three digits.")]
    )
    history = HistoricalRecords()

    class Meta:
        ordering = ["mcc", "mnc"]
        constraints = [
            models.UniqueConstraint(
                fields=["mcc", "mnc"],
                name="network_code_unique",
                violation_error_message="Another carrier already operates this MCC-MNC.",
            )
        ]

    def __str__(self) -> str:
        return f"{self.mcc}-{self.mnc}"


class NumberPrefix(models.Model):
    """E.164 number ranges a carrier serves, for routing a payment from the MSISDN alone."""

    carrier = models.ForeignKey(Carrier, on_delete=models.CASCADE, related_name="number_prefixes")
    prefix = models.CharField(
        max_length=15,
        validators=[RegexValidator(r"^\d{2,15}$", "Digits of the E.164 number, country code first, without +.")],
    )
    history = HistoricalRecords()

    class Meta:
        verbose_name_plural = "number prefixes"
        ordering = ["prefix"]
        constraints = [
            models.UniqueConstraint(
                fields=["prefix"],
                name="number_prefix_unique",
                violation_error_message="This prefix already routes to a carrier: one prefix, one carrier.",
            )
        ]

    def __str__(self) -> str:
        return f"+{self.prefix}"


AMOUNT_NOT_POSITIVE = "The price must be more than zero."
PAYOUT_OUTSIDE_AMOUNT = (
    "The carrier's payout must be between zero and the price itself: a carrier never pays out more than it charges."
)


class PricePoint(models.Model):
    carrier = models.ForeignKey(Carrier, on_delete=models.PROTECT, related_name="price_points")
    code = models.SlugField(max_length=64)
    amount_minor = models.BigIntegerField(help_text="Price in minor units of the currency (cents, yen...).")
    currency = models.CharField(max_length=3)
    tax_included = models.BooleanField(default=True)
    carrier_payout_minor = models.BigIntegerField(
        default=0, help_text="What the carrier pays out to PlayPay for one charge, in minor units."
    )
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    history = HistoricalRecords()

    class Meta:
        ordering = ["carrier_id", "amount_minor"]
        constraints = [
            models.UniqueConstraint(
                fields=["carrier", "code"],
                name="price_point_code_unique_per_carrier",
                violation_error_message="This carrier already has a price point with this code.",
            ),
            models.CheckConstraint(
                condition=Q(amount_minor__gt=0),
                name="price_point_amount_positive",
                violation_error_message=AMOUNT_NOT_POSITIVE,
            ),
            models.CheckConstraint(
                condition=Q(carrier_payout_minor__gte=0) & Q(carrier_payout_minor__lte=F("amount_minor")),
                name="price_point_payout_within_amount",
                violation_error_message=PAYOUT_OUTSIDE_AMOUNT,
            ),
        ]

    def __str__(self) -> str:
        return f"{self.code} ({format_money(self.amount_minor, self.currency)})"

    def clean(self) -> None:
        # The check constraints' messages on the fields they concern: the form shows them beside the field
        # (and then skips the constraint, whose message would otherwise stand alone above the form).
        errors = {}
        if self.amount_minor is not None and self.amount_minor <= 0:
            errors["amount_minor"] = AMOUNT_NOT_POSITIVE
        elif (
            self.amount_minor is not None
            and self.carrier_payout_minor is not None
            and not 0 <= self.carrier_payout_minor <= self.amount_minor
        ):
            errors["carrier_payout_minor"] = PAYOUT_OUTSIDE_AMOUNT
        if errors:
            raise ValidationError(errors)


def _configured() -> Q:
    return (
        Q(is_active=True)
        | ~Q(endpoint="")
        | ~Q(credentials_encrypted="")
        | Q(Exists(PricePoint.objects.filter(carrier=OuterRef("pk"))))
    )
