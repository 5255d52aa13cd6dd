from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.db.models import F, Q

from playpay.money import UnknownCurrency, validate_currency
from reporting.storage import reporting_storage


class ExportKind(models.TextChoices):
    TRANSACTIONS = "transactions"
    REFUNDS = "refunds"
    LEDGER = "ledger", "ledger lines"


class ExportFormat(models.TextChoices):
    CSV = "csv", "CSV"
    XLSX = "xlsx", "Excel (XLSX)"


class ExportJob(models.Model):
    """An export run in the background: who asked for what, how far it got, and the file it made."""

    class Status(models.TextChoices):
        PENDING = "pending"
        RUNNING = "running"
        DONE = "done"
        FAILED = "failed"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    kind = models.CharField(max_length=20, choices=ExportKind.choices)
    filters = models.JSONField(default=dict, blank=True)
    file_format = models.CharField("format", max_length=4, choices=ExportFormat.choices)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    rows_done = models.PositiveIntegerField(default=0)
    rows_total = models.PositiveIntegerField(null=True, blank=True)
    file = models.FileField(storage=reporting_storage, upload_to="exports/%Y/%m/", blank=True)
    error = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=["pending", "running", "done", "failed"]), name="export_status"
            ),
            models.CheckConstraint(
                condition=Q(rows_total__isnull=True) | Q(rows_done__lte=F("rows_total")),
                name="export_progress_le_total",
            ),
        ]
        indexes = [models.Index(fields=["user", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} export #{self.pk} ({self.file_format})"

    @property
    def progress_percent(self) -> int | None:
        if self.status == self.Status.DONE:
            return 100
        if not self.rows_total:
            return None
        return min(100, 100 * self.rows_done // self.rows_total)


def validate_currency_code(value: str) -> None:
    try:
        if validate_currency(value) != value:
            raise ValidationError(f"{value!r}: write ISO 4217 codes in upper case, e.g. EUR")
    except UnknownCurrency as exc:
        raise ValidationError(str(exc)) from exc


class SettlementFile(models.Model):
    """A carrier's settlement file: the charges it says it collected for us in a period."""

    class Status(models.TextChoices):
        IMPORTED = "imported", "imported, not reconciled yet"
        BALANCED = "balanced", "reconciled: no differences"
        DIFFERENCES = "differences", "reconciled: differences"

    carrier = models.ForeignKey("carriers.Carrier", on_delete=models.PROTECT, related_name="settlement_files")
    name = models.CharField("file name", max_length=255)
    period_from = models.DateField()
    period_to = models.DateField()
    uploaded_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    uploaded_at = models.DateTimeField(auto_now_add=True)
    row_count = models.PositiveIntegerField(default=0)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.IMPORTED)
    # The counts of the latest reconciliation, so that the list shows which files need a look.
    matched = models.PositiveIntegerField(default=0)
    amount_mismatches = models.PositiveIntegerField(default=0)
    missing_on_our_side = models.PositiveIntegerField(default=0)
    missing_on_their_side = models.PositiveIntegerField(default=0)
    reconciled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.CheckConstraint(condition=Q(period_from__lte=F("period_to")), name="settlement_period_ordered"),
        ]
        indexes = [models.Index(fields=["carrier", "-period_to"])]

    def __str__(self) -> str:
        return f"{self.carrier_id} {self.period_from}…{self.period_to} ({self.name})"


class SettlementLine(models.Model):
    """One line of a settlement file, as the carrier wrote it (`raw`) and as we read it."""

    file = models.ForeignKey(SettlementFile, on_delete=models.CASCADE, related_name="lines")
    row_number = models.PositiveIntegerField(help_text="Data row in the file; 1 is the first row under the header.")
    carrier_reference = models.CharField(max_length=128)
    amount_minor = models.BigIntegerField(help_text="Signed: a refund the carrier lists on its own line is negative.")
    currency = models.CharField(max_length=3, validators=[validate_currency_code])
    date = models.DateField()
    raw = models.JSONField(encoder=DjangoJSONEncoder, default=dict)

    class Meta:
        ordering = ["file", "row_number"]
        constraints = [models.UniqueConstraint(fields=["file", "row_number"], name="settlement_line_row_unique")]
        indexes = [models.Index(fields=["file", "carrier_reference"])]

    def __str__(self) -> str:
        return f"{self.carrier_reference} {self.amount_minor} {self.currency}"
