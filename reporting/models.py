from datetime import datetime
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.serializers.json import DjangoJSONEncoder
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import F, Q
from django.db.models.functions import Now

from playpay.money import UnknownCurrency, validate_currency
from playpay.tables import TableFormat
from reporting.storage import reporting_storage


class ExportKind(models.TextChoices):
    TRANSACTIONS = "transactions"
    REFUNDS = "refunds"
    REVERSALS = "reversals"
    LEDGER = "ledger", "ledger lines"


def export_file_path(job: "ExportJob", filename: str) -> str:
    """One folder per job: a new attempt clears what an attempt that died left, and nothing else."""
    return f"exports/{job.pk}/{filename}"


class ExportJob(models.Model):
    """An export run in the background: who asked for what, how far it got, and the file it made.

    A worker claims a pending job (status running, `attempts` + 1) and proves it is alive by moving
    `heartbeat_at` with its progress; a running job whose heartbeat stopped is queued again, up to
    `EXPORT_MAX_ATTEMPTS` attempts, then failed with the reason in `error`.
    """

    class Status(models.TextChoices):
        PENDING = "pending", "queued"
        RUNNING = "running"
        DONE = "done"
        FAILED = "failed"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    kind = models.CharField(max_length=20, choices=ExportKind.choices)
    filters = models.JSONField(default=dict, blank=True)
    file_format = models.CharField("format", max_length=4, choices=TableFormat.choices)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    rows_done = models.PositiveIntegerField(default=0)
    rows_total = models.PositiveIntegerField(
        null=True, blank=True, help_text="Estimated while the export runs (the planner's estimate when large)."
    )
    rows_total_exact = models.BooleanField(default=False, help_text="Whether rows_total is a count, not a guess.")
    file = models.FileField(storage=reporting_storage, upload_to=export_file_path, blank=True)
    error = models.CharField(max_length=500, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0, help_text="Times a worker claimed it.")
    worker = models.CharField(max_length=120, blank=True, help_text="The process that claimed it last.")
    heartbeat_at = models.DateTimeField(null=True, blank=True, help_text="Last sign of life of its worker.")
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
                condition=~Q(status="running") | Q(heartbeat_at__isnull=False), name="export_running_has_heartbeat"
            ),
        ]
        indexes = [
            models.Index(fields=["user", "-created_at"]),
            # What workers look for: the queued jobs, and the running ones whose heartbeat stopped.
            models.Index(
                fields=["status", "heartbeat_at"],
                condition=Q(status__in=["pending", "running"]),
                name="export_job_working_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} export #{self.pk} ({self.file_format})"

    @property
    def progress_percent(self) -> int | None:
        if self.status == self.Status.DONE:
            return 100
        if not self.rows_total:
            return None
        # An estimate can be passed: the job is not done before it says so.
        return min(99, 100 * self.rows_done // self.rows_total)


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
        RESOLVED = "resolved", "reconciled: differences resolved"

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
        permissions = [("resolve_settlementfile", "Can annotate and resolve the differences of a reconciliation")]

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


class ReconciliationNote(models.Model):
    """What finance found out about a difference of a reconciliation, and whether it is resolved: who, when, why.

    A line of the reconciliation is named by its carrier reference, or by our payment when we have no reference
    for it. Notes are kept, never edited: the latest `resolve` or `reopen` says whether the line is resolved.
    """

    class Action(models.TextChoices):
        NOTE = "note", "note"
        RESOLVE = "resolve", "resolved"
        REOPEN = "reopen", "reopened"

    file = models.ForeignKey(SettlementFile, on_delete=models.CASCADE, related_name="notes")
    carrier_reference = models.CharField(max_length=128, blank=True)
    payment_id = models.CharField("payment", max_length=36, blank=True, help_text="Ours, for a line without reference.")
    action = models.CharField(max_length=10, choices=Action.choices, default=Action.NOTE)
    text = models.TextField("why", max_length=2000)
    author = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["file", "id"]
        indexes = [models.Index(fields=["file", "carrier_reference", "payment_id"])]
        constraints = [
            models.CheckConstraint(
                condition=~Q(carrier_reference="", payment_id=""), name="reconciliation_note_names_a_line"
            ),
            models.CheckConstraint(condition=~Q(text=""), name="reconciliation_note_says_why"),
        ]

    def __str__(self) -> str:
        return f"{self.get_action_display()} {self.carrier_reference or self.payment_id}: {self.text[:40]}"


# --- The data catalog -------------------------------------------------------------------------


class SourceKind(models.TextChoices):
    SQL = "sql", "SQL (our tables)"
    JOURNAL = "journal", "NoSQL (the interaction journal)"
    API = "api", "HTTP JSON API"


class TimeBucket(models.TextChoices):
    HOUR = "hour"
    DAY = "day"
    WEEK = "week"
    MONTH = "month"


class Dataset(models.Model):
    """A named, described set of data that can be queried, charted, exported and alerted on.

    `source` names an entry of the registry of its kind (`reporting.catalog`): staff choose what
    to expose from allowed sources, never type SQL or a pipeline.
    """

    slug = models.SlugField(max_length=60, unique=True)
    name = models.CharField(max_length=120)
    description = models.TextField(blank=True)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    source_kind = models.CharField(max_length=10, choices=SourceKind.choices)
    source = models.CharField(
        max_length=60,
        blank=True,
        help_text="SQL and journal datasets: the registered source (e.g. payments, carrier_calls).",
    )
    time_field = models.CharField(
        max_length=60, blank=True, help_text="The source field periods and time buckets apply to."
    )
    api_url = models.URLField("API URL", blank=True, help_text="API datasets: the JSON endpoint fetched.")
    api_rows_path = models.CharField(
        "rows path",
        max_length=120,
        blank=True,
        help_text="API datasets: dotted path to the list of row objects in the reply (e.g. rates).",
    )
    api_timeout_seconds = models.PositiveSmallIntegerField(
        "timeout (s)", default=5, validators=[MinValueValidator(1, "The timeout is at least 1 second.")]
    )
    api_refresh_minutes = models.PositiveSmallIntegerField("refresh every (min)", default=15)
    # The last good payload (the cache queries read) and what happened at the last fetch.
    api_payload = models.JSONField(null=True, blank=True, editable=False)
    api_fetched_at = models.DateTimeField("last good fetch", null=True, blank=True, editable=False)
    api_attempted_at = models.DateTimeField("last fetch attempt", null=True, blank=True, editable=False)
    api_last_error = models.CharField("last error", max_length=500, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(condition=Q(source_kind__in=SourceKind.values), name="dataset_source_kind"),
            models.CheckConstraint(
                condition=Q(source_kind="api", api_url__gt="") | (~Q(source_kind="api") & Q(source__gt="")),
                name="dataset_source_given",
                violation_error_message="Say where the data comes from: an API dataset needs its URL, any other "
                "its source.",
            ),
            models.CheckConstraint(
                condition=Q(api_timeout_seconds__gt=0),
                name="dataset_api_timeout_positive",
                violation_error_message="The timeout is at least 1 second.",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        from reporting.catalog import validate_dataset_source

        validate_dataset_source(self)


class DatasetField(models.Model):
    """A dimension (to filter and group by) or a measure (aggregated) of a dataset."""

    class Role(models.TextChoices):
        DIMENSION = "dimension"
        MEASURE = "measure"

    class DataType(models.TextChoices):
        STRING = "string"
        INTEGER = "integer"
        DECIMAL = "decimal"
        MONEY = "money", "money (minor units of the row's currency)"
        RATIO = "ratio", "ratio (0 to 1)"
        DATETIME = "datetime"

    class Aggregation(models.TextChoices):
        COUNT = "count", "count (rows, or non-empty values of the source)"
        COUNT_DISTINCT = "count_distinct", "count distinct"
        SUM = "sum"
        AVG = "avg", "average"
        MIN = "min"
        MAX = "max"

    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="fields")
    name = models.SlugField(max_length=60, help_text="The name queries use.")
    label = models.CharField(max_length=120, blank=True)
    role = models.CharField(max_length=10, choices=Role.choices)
    source = models.CharField(
        max_length=120,
        blank=True,
        help_text="The source field it reads (empty: the same as the name; a count of rows needs none).",
    )
    data_type = models.CharField(max_length=10, choices=DataType.choices, default=DataType.STRING)
    unit = models.CharField(max_length=20, blank=True, help_text="e.g. ms, %, or empty; money takes the currency.")
    aggregation = models.CharField(max_length=15, choices=Aggregation.choices, blank=True)
    description = models.CharField(max_length=255, blank=True)

    class Meta:
        ordering = ["dataset", "role", "id"]
        constraints = [
            models.UniqueConstraint(fields=["dataset", "name"], name="dataset_field_unique_name"),
            models.CheckConstraint(
                condition=(Q(role="measure") & ~Q(aggregation="")) | (Q(role="dimension") & Q(aggregation="")),
                name="dataset_field_aggregation_for_measures_only",
                violation_error_message="A measure needs an aggregation (sum, count…); a dimension has none.",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.dataset_id}.{self.name}"

    def clean(self) -> None:
        from reporting.catalog import validate_dataset_field

        dataset = getattr(self, "dataset", None) if self.dataset_id or "dataset" in self._state.fields_cache else None
        if dataset is not None:
            validate_dataset_field(dataset, self)

    @property
    def source_name(self) -> str:
        if self.source:
            return self.source
        if self.role == self.Role.MEASURE and self.aggregation == self.Aggregation.COUNT:
            return ""
        return self.name


# --- The dashboard ----------------------------------------------------------------------------


class Dashboard(models.Model):
    """A dashboard page; only superusers and members of its groups may open it."""

    slug = models.SlugField(max_length=60, unique=True)
    title = models.CharField(max_length=120)
    groups = models.ManyToManyField("auth.Group", blank=True, related_name="dashboards")
    funnel = models.ForeignKey(
        "funnel.FunnelDefinition",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The funnel it shows (its hourly rollups); empty: the first one.",
    )
    currency = models.CharField(
        max_length=3, default="EUR", validators=[validate_currency_code], help_text="Totals are converted into it."
    )
    refresh_seconds = models.PositiveSmallIntegerField(
        default=5, validators=[MinValueValidator(2, "A dashboard refreshes at most every 2 seconds.")]
    )

    class Meta:
        ordering = ["title"]
        constraints = [
            models.CheckConstraint(
                condition=Q(refresh_seconds__gte=2),
                name="dashboard_refresh_at_least_2s",
                violation_error_message="A dashboard refreshes at most every 2 seconds.",
            )
        ]

    def __str__(self) -> str:
        return self.title


# --- Alerts -----------------------------------------------------------------------------------


class AlertRule(models.Model):
    """A threshold on a dataset measure over a trailing window, e.g. success rate < 0.8 over 15 minutes."""

    class Comparison(models.TextChoices):
        LT = "lt", "<"
        LTE = "lte", "≤"
        GT = "gt", ">"
        GTE = "gte", "≥"

    name = models.CharField(max_length=120, unique=True)
    dataset = models.ForeignKey(Dataset, on_delete=models.PROTECT, related_name="alert_rules")
    measure = models.SlugField(max_length=60)
    filters = models.JSONField(default=dict, blank=True, help_text='Dimension values, e.g. {"carrier": "camara-gb"}.')
    group_by = models.SlugField(
        max_length=60, blank=True, help_text="Optional dimension: the rule holds for each of its values separately."
    )
    comparison = models.CharField(max_length=3, choices=Comparison.choices)
    threshold = models.DecimalField(max_digits=18, decimal_places=6)
    window_minutes = models.PositiveIntegerField(
        default=15, validators=[MinValueValidator(1, "The window is at least 1 minute.")]
    )
    min_rows = models.PositiveIntegerField(
        default=1, help_text="Rows needed in the window before the rule is judged (fewer: no verdict)."
    )
    is_active = models.BooleanField(default=True)
    last_evaluated_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=Q(window_minutes__gt=0),
                name="alert_window_positive",
                violation_error_message="The window is at least 1 minute.",
            )
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def condition(self) -> str:
        return f"{self.measure} {self.get_comparison_display()} {self.threshold.normalize()}"

    def clean(self) -> None:
        from reporting.services.alerts import validate_alert_rule

        validate_alert_rule(self)


class AlertEvent(models.Model):
    """One time a rule fired (for one group value), and when it resolved."""

    rule = models.ForeignKey(AlertRule, on_delete=models.CASCADE, related_name="events")
    key = models.CharField(max_length=120, blank=True, help_text="The group value, when the rule has a group by.")
    fired_at = models.DateTimeField()
    fired_value = models.DecimalField(max_digits=24, decimal_places=6)
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolved_value = models.DecimalField(max_digits=24, decimal_places=6, null=True, blank=True)

    class Meta:
        ordering = ["-fired_at", "-id"]
        constraints = [
            # A rule fires at most once per group value until it resolves.
            models.UniqueConstraint(
                fields=["rule", "key"], condition=Q(resolved_at__isnull=True), name="alert_one_open_event"
            ),
            models.CheckConstraint(
                condition=Q(resolved_at__isnull=True) | Q(resolved_at__gte=F("fired_at")),
                name="alert_resolved_after_fired",
            ),
        ]
        indexes = [models.Index(fields=["resolved_at", "-fired_at"])]

    def __str__(self) -> str:
        return f"{self.rule_id}{f' [{self.key}]' if self.key else ''} fired {self.fired_at:%Y-%m-%d %H:%M}"

    @property
    def is_open(self) -> bool:
        return self.resolved_at is None


# --- Payment rollups ---------------------------------------------------------------------------
# Summaries of payments, refunds and reversals per UTC hour of their creation, rebuilt from those tables by
# `reporting.services.rollups`; dashboard and catalog queries read them where they can answer
# (`reporting.services.rollups.rollup_rows`). They reference apps and carriers without a database constraint:
# they are derived data, never the only record, and must not slow down or lock the tables they summarise.


def _rollup_dimension(model: str) -> "models.ForeignKey[Any, Any]":
    return models.ForeignKey(model, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+")


class PaymentRollupFields(models.Model):
    """Payments created in one UTC hour with the same app, carrier, currency, status and failure code."""

    hour = models.DateTimeField()
    app = _rollup_dimension("tenants.App")
    carrier = _rollup_dimension("carriers.Carrier")
    currency = models.CharField(max_length=3)
    status = models.CharField(max_length=20)
    failure_code = models.CharField(max_length=64)
    payments = models.BigIntegerField()
    amount_minor = models.BigIntegerField()
    amount_min_minor = models.BigIntegerField()
    amount_max_minor = models.BigIntegerField()
    refunded_minor = models.BigIntegerField()
    refunded_min_minor = models.BigIntegerField()
    refunded_max_minor = models.BigIntegerField()
    # Time from creation to the first final status (succeeded, failed, expired) of the payments that reached
    # one: its sum (for the average) and a histogram with fixed bounds (for percentiles), see DECISION_BOUNDS.
    decision_ms = models.BigIntegerField(default=0)
    decided_under_1s = models.BigIntegerField(default=0)
    decided_under_5s = models.BigIntegerField(default=0)
    decided_under_30s = models.BigIntegerField(default=0)
    decided_under_2m = models.BigIntegerField(default=0)
    decided_under_10m = models.BigIntegerField(default=0)
    decided_under_1h = models.BigIntegerField(default=0)
    decided_after_1h = models.BigIntegerField(default=0)

    class Meta:
        abstract = True

    def __str__(self) -> str:
        return f"{self.hour:%Y-%m-%d %H}:00 {self.status} x{self.payments}"


class PaymentRollup(PaymentRollupFields):
    class Meta:
        indexes = [models.Index(fields=["hour"])]


class PaymentDayRollup(PaymentRollupFields):
    """The hourly rows of one whole UTC day added up (`hour` is the day's first): long periods read far fewer."""

    class Meta:
        indexes = [models.Index(fields=["hour"])]


class PaymentMonthRollup(PaymentRollupFields):
    """The daily rows of one whole UTC month added up (`hour` is the month's first): periods of months read
    about one row per combination and month."""

    class Meta:
        indexes = [models.Index(fields=["hour"])]


# Upper bounds (seconds) of the decision-time histogram's buckets, then one open bucket.
DECISION_BOUNDS: tuple[tuple[int, str], ...] = (
    (1, "decided_under_1s"),
    (5, "decided_under_5s"),
    (30, "decided_under_30s"),
    (120, "decided_under_2m"),
    (600, "decided_under_10m"),
    (3600, "decided_under_1h"),
)
DECISION_OVER = "decided_after_1h"


class RefundRollupFields(models.Model):
    """Refunds requested in one UTC hour, by their payment's app and carrier, currency and status."""

    hour = models.DateTimeField()
    app = _rollup_dimension("tenants.App")
    carrier = _rollup_dimension("carriers.Carrier")
    currency = models.CharField(max_length=3)
    status = models.CharField(max_length=10)
    refunds = models.BigIntegerField()
    amount_minor = models.BigIntegerField()
    amount_min_minor = models.BigIntegerField()
    amount_max_minor = models.BigIntegerField()

    class Meta:
        abstract = True

    def __str__(self) -> str:
        return f"{self.hour:%Y-%m-%d %H}:00 {self.status} x{self.refunds}"


class RefundRollup(RefundRollupFields):
    class Meta:
        indexes = [models.Index(fields=["hour"])]


class RefundDayRollup(RefundRollupFields):
    class Meta:
        indexes = [models.Index(fields=["hour"])]


class RefundMonthRollup(RefundRollupFields):
    class Meta:
        indexes = [models.Index(fields=["hour"])]


class ReversalRollupFields(models.Model):
    """Reversals requested in one UTC hour, by their payment's app, carrier and currency, and status."""

    hour = models.DateTimeField()
    app = _rollup_dimension("tenants.App")
    carrier = _rollup_dimension("carriers.Carrier")
    currency = models.CharField(max_length=3)
    status = models.CharField(max_length=10)
    reversals = models.BigIntegerField()
    amount_minor = models.BigIntegerField()
    amount_min_minor = models.BigIntegerField()
    amount_max_minor = models.BigIntegerField()

    class Meta:
        abstract = True

    def __str__(self) -> str:
        return f"{self.hour:%Y-%m-%d %H}:00 {self.status} x{self.reversals}"


class ReversalRollup(ReversalRollupFields):
    class Meta:
        indexes = [models.Index(fields=["hour"])]


class ReversalDayRollup(ReversalRollupFields):
    class Meta:
        indexes = [models.Index(fields=["hour"])]


class ReversalMonthRollup(ReversalRollupFields):
    class Meta:
        indexes = [models.Index(fields=["hour"])]


class SubscriptionChargeRollupFields(models.Model):
    """Subscription charges made in one UTC hour with the same app, carrier, plan, currency (their payment's; none
    for a period missed), kind, outcome and failure code. `periods_decided` counts the first attempts at a period
    that were decided, `periods_renewed` those whose period was charged on any attempt so far (a retry's success
    recounts its first attempt's hour)."""

    hour = models.DateTimeField()
    app = _rollup_dimension("tenants.App")
    carrier = _rollup_dimension("carriers.Carrier")
    plan = _rollup_dimension("subscriptions.Plan")
    currency = models.CharField(max_length=3, null=True)  # noqa: DJ001 (as its rows read: a missed period has none)
    kind = models.CharField(max_length=8)
    outcome = models.CharField(max_length=10)
    failure_code = models.CharField(max_length=64)
    charges = models.BigIntegerField()
    amount_minor = models.BigIntegerField(null=True)
    amount_min_minor = models.BigIntegerField(null=True)
    amount_max_minor = models.BigIntegerField(null=True)
    periods_decided = models.BigIntegerField()
    periods_renewed = models.BigIntegerField()

    class Meta:
        abstract = True

    def __str__(self) -> str:
        return f"{self.hour:%Y-%m-%d %H}:00 {self.kind} {self.outcome} x{self.charges}"


class SubscriptionChargeRollup(SubscriptionChargeRollupFields):
    class Meta:
        indexes = [models.Index(fields=["hour"])]


class SubscriptionChargeDayRollup(SubscriptionChargeRollupFields):
    class Meta:
        indexes = [models.Index(fields=["hour"])]


class SubscriptionChargeMonthRollup(SubscriptionChargeRollupFields):
    class Meta:
        indexes = [models.Index(fields=["hour"])]


class CarrierCallRollup(models.Model):
    """Carrier calls (journal records) of one UTC hour, day or month (`tier`, from `start`) with the same carrier,
    operation, outcome and error code, built by `reporting.services.call_rollups` from the journal."""

    tier = models.CharField(max_length=5)  # "hour", "day" or "month"
    start = models.DateTimeField()
    carrier = models.CharField(max_length=128)
    # A document without the field (NULL) is a group apart from one with an empty text, as the journal reads it.
    operation = models.TextField(null=True)  # noqa: DJ001
    outcome = models.TextField(null=True)  # noqa: DJ001
    error_code = models.TextField(null=True)  # noqa: DJ001
    calls = models.BigIntegerField()
    failed = models.BigIntegerField()
    transport_failed = models.BigIntegerField()
    latency_ms = models.BigIntegerField()  # the sum over the calls that have one
    latency_calls = models.BigIntegerField()
    latency_min_ms = models.BigIntegerField(null=True)
    latency_max_ms = models.BigIntegerField(null=True)

    class Meta:
        indexes = [models.Index(fields=["tier", "start"])]

    def __str__(self) -> str:
        return f"{self.tier} {self.start:%Y-%m-%d %H}:00 {self.carrier} x{self.calls}"


class CarrierCallRollupState(models.Model):
    """How far the carrier-call rollups go (one row): the hours [covered_from, covered_until) are computed, with
    every journal record up to `last_id` and those the journal's snapshot `checked_snapshot` saw."""

    covered_from = models.DateTimeField()
    covered_until = models.DateTimeField()
    last_id = models.BigIntegerField(default=0)
    checked_snapshot = models.TextField(blank=True)
    refreshed_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"carrier-call rollups until {self.covered_until:%Y-%m-%d %H}:00"


class RollupState(models.Model):
    """How far the payment rollups go (one row): every hour before `covered_until` is computed, and the
    changes made before `checked_at` are in them (give or take the margin the refresh looks back)."""

    covered_until = models.DateTimeField()
    checked_at = models.DateTimeField()
    # The transactions whose work the last run could see: PostgreSQL's snapshot (pg_snapshot) when it began.
    checked_snapshot = models.TextField(blank=True)
    # Kinds of rollups added after the others were built, and the hour each is built up to (ISO): the refresh
    # builds each up to `covered_until` in steps, and readers use it only up to there (a kind not named is
    # built with the others).
    kinds_until = models.JSONField(default=dict, blank=True)
    refreshed_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"payment rollups until {self.covered_until:%Y-%m-%d %H}:00"

    def covered_for(self, kind: str) -> datetime:
        """Every hour before this is computed for `kind`."""
        until = self.kinds_until.get(kind)
        return min(self.covered_until, datetime.fromisoformat(until)) if until else self.covered_until


def _count_dimension(model: str) -> "models.ForeignKey[Any, Any]":
    # Read whole or through the counts' unique index: an index of its own would only slow the triggers' inserts.
    return models.ForeignKey(model, on_delete=models.DO_NOTHING, db_constraint=False, db_index=False, related_name="+")


class SubscriptionCountFields(models.Model):
    app = _count_dimension("tenants.App")
    carrier = _count_dimension("carriers.Carrier")
    plan = _count_dimension("subscriptions.Plan")
    status = models.CharField(max_length=16)

    class Meta:
        abstract = True


class SubscriptionCount(SubscriptionCountFields):
    """How many subscriptions stand in each status, per app, carrier and plan, as of the last fold (PostgreSQL).

    The subscriptions table's triggers write every change of these counts to `SubscriptionCountChange`, in the
    transaction that makes it; the periodic fold (`reporting.services.subscriber_counts.fold`) moves them here.
    A reader adds the changes not folded yet, in the same statement: the counts are the table's, to the row."""

    subscriptions = models.BigIntegerField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["app", "carrier", "plan", "status"], name="subscription_count_unique")
        ]

    def __str__(self) -> str:
        return f"{self.subscriptions} {self.status}"


class SubscriptionCountChange(SubscriptionCountFields):
    """A change of the subscription counts not folded into `SubscriptionCount` yet (+n subscriptions entered the
    status, -n left it), written by the subscriptions table's triggers; append-only until the fold takes it."""

    change = models.BigIntegerField()
    # When the transaction that made the change began (the triggers write now(), on the database's clock): a day's
    # count (`SubscriberDayCount`) takes the changes made before the day began.
    at = models.DateTimeField(db_default=Now())

    def __str__(self) -> str:
        return f"{self.change:+} {self.status}"


class SubscriberDayCount(SubscriptionCountFields):
    """How many subscriptions stood in each status at the start of a UTC day (`day`, its midnight), per app, carrier
    and plan: the subscriber base over time, for averages over a period (ARPU). Written by the fold once the day
    has begun (`SubscriberCountState`); a day is never written again."""

    day = models.DateTimeField()
    subscriptions = models.BigIntegerField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["day", "app", "carrier", "plan", "status"], name="subscriber_day_count_unique"
            )
        ]
        indexes = [models.Index(fields=["day"], name="subscriber_day_idx")]

    def __str__(self) -> str:
        return f"{self.day:%Y-%m-%d}: {self.subscriptions} {self.status}"


class SubscriberCountState(models.Model):
    """The days the fold has counted (one row): `SubscriberDayCount` holds every day from `first_day` to the day
    before `next_day`, and the counts hold no change made since `next_day` began (those wait for its count)."""

    first_day = models.DateTimeField()
    next_day = models.DateTimeField()

    def __str__(self) -> str:
        return f"subscriber days {self.first_day:%Y-%m-%d} to {self.next_day:%Y-%m-%d}"
