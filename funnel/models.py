from typing import Any

from django.core.validators import MinValueValidator
from django.db import models


class Journey(models.Model):
    """One player's way through a purchase, as the game names it (app + journey id)."""

    app = models.ForeignKey("tenants.App", on_delete=models.PROTECT, related_name="journeys")
    journey_id = models.CharField(max_length=128)
    user_ref = models.CharField(max_length=128, blank=True)
    started_at = models.DateTimeField(help_text="Time of its earliest event.")
    carrier = models.CharField(max_length=80, blank=True)
    country = models.CharField(max_length=2, blank=True)
    price_point = models.CharField(max_length=64, blank=True)
    flow = models.CharField(max_length=12, blank=True)
    outcome = models.CharField(max_length=20, blank=True, help_text="The payment's final status, once known.")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["app", "journey_id"], name="journey_unique_per_app")]
        indexes = [
            models.Index(fields=["app", "started_at"]),
            # A funnel report over every app reads the period's journeys by their start.
            models.Index(fields=["started_at"], name="journey_started_idx"),
            # The analytics shipping reads the journeys changed since its mark, in this order.
            models.Index(fields=["updated_at", "id"], name="journey_updated_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.app_id}:{self.journey_id}"


class FunnelEvent(models.Model):
    """One step of a journey. On PostgreSQL the table is partitioned by month of `occurred_at`
    (see funnel.partitions); its primary key there is (id, occurred_at). Event ids are made unique
    per app by `FunnelEventKey`, which ingestion claims in the same transaction."""

    class Source(models.TextChoices):
        GAME = "game", "game backend"
        PLATFORM = "platform"

    # No index of its own, (app, journey_id, occurred_at) leads with it; no foreign-key constraint, whose
    # check per row would cost a fifth of an insert (PROTECT is enforced by Django, the app is the caller).
    app = models.ForeignKey(
        "tenants.App", on_delete=models.PROTECT, related_name="funnel_events", db_index=False, db_constraint=False
    )
    journey_id = models.CharField(max_length=128)
    event_id = models.CharField(max_length=160, help_text="Given by the sender; a repeat is ignored.")
    step = models.CharField(max_length=64)
    occurred_at = models.DateTimeField(help_text="When it happened: late events are placed by this time.")
    received_at = models.DateTimeField(auto_now_add=True)
    source = models.CharField(max_length=10, choices=Source.choices)
    error_code = models.CharField(max_length=64, blank=True)
    properties = models.JSONField(default=dict, blank=True)

    class Meta:
        indexes = [
            # Funnel reports read a period's events in this order and need only these columns: with the
            # step included, an index-only scan gives them, without a visit to the table per event.
            models.Index(
                fields=["app", "journey_id", "occurred_at"], include=["step"], name="funnel_event_journey_idx"
            ),
            models.Index(fields=["step", "occurred_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.step} @ {self.occurred_at:%Y-%m-%d %H:%M:%S}"


class FunnelEventKey(models.Model):
    """The event ids received, per app: the de-duplication key of funnel events.

    A partitioned table can only enforce uniqueness on keys that include its partition key, and an
    event sent again may carry another timestamp; so each event id is claimed here (INSERT ... ON
    CONFLICT DO NOTHING) in the transaction that stores the event, and only claimed events are stored.
    """

    pk = models.CompositePrimaryKey("app_id", "event_id")
    app = models.ForeignKey(
        "tenants.App", on_delete=models.PROTECT, related_name="+", db_constraint=False, db_index=False
    )
    event_id = models.CharField(max_length=160)

    def __str__(self) -> str:
        return f"{self.app_id}:{self.event_id}"


COUNTING_FIELDS = ("steps", "window_seconds", "exclusion_step", "app_id")


class FunnelDefinition(models.Model):
    """An ordered list of steps to convert through within a window, as staff define it in the admin."""

    name = models.CharField(max_length=100, unique=True)
    app = models.ForeignKey(
        "tenants.App", null=True, blank=True, on_delete=models.CASCADE, help_text="Empty: every app."
    )
    steps = models.JSONField(
        help_text='Ordered step names, e.g. ["store_opened", "payment_created", "charge_succeeded"].'
    )
    window_seconds = models.PositiveIntegerField(
        default=3600,
        validators=[MinValueValidator(1, "The conversion window is at least 1 second.")],
        help_text="Conversion window from the first step.",
    )
    exclusion_step = models.CharField(
        max_length=64, blank=True, help_text="Journeys with this step inside their window are left out."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=models.Q(window_seconds__gt=0),
                name="funnel_window_positive",
                violation_error_message="The conversion window is at least 1 second.",
            )
        ]

    def __str__(self) -> str:
        return self.name

    def save(self, *args: Any, **kwargs: Any) -> None:
        """A change of what the funnel counts drops its rollups, computed for the old definition."""
        if self.pk is not None:
            old = FunnelDefinition.objects.filter(pk=self.pk).values(*COUNTING_FIELDS).first()
            if old is not None and any(old[name] != getattr(self, name) for name in COUNTING_FIELDS):
                self.rollups.all().delete()
                self.rollup_hours.all().delete()
                self.rollup_days.all().delete()
        super().save(*args, **kwargs)

    def clean(self) -> None:
        from django.core.exceptions import ValidationError

        if not isinstance(self.steps, list) or not 2 <= len(self.steps) <= 20:
            raise ValidationError({"steps": "A list of 2 to 20 step names."})
        if not all(isinstance(step, str) and step for step in self.steps):
            raise ValidationError({"steps": "Every step is a non-empty name."})
        if self.exclusion_step and self.exclusion_step in self.steps:
            raise ValidationError({"exclusion_step": "The exclusion step cannot be one of the funnel's steps."})


class FunnelRollup(models.Model):
    """Per funnel, hour of journey start and breakdown values: how many journeys reached each level.

    Maintained by the `funnel: refresh rollups` periodic job, so that dashboards read these
    rows instead of the raw events.
    """

    funnel = models.ForeignKey(FunnelDefinition, on_delete=models.CASCADE, related_name="rollups")
    hour = models.DateTimeField()
    app = models.ForeignKey("tenants.App", on_delete=models.CASCADE, related_name="+")
    carrier = models.CharField(max_length=80, blank=True)
    country = models.CharField(max_length=2, blank=True)
    price_point = models.CharField(max_length=64, blank=True)
    flow = models.CharField(max_length=12, blank=True)
    # reached[k] = journeys that reached step k+1 (so reached[0] = journeys that entered).
    reached = models.JSONField()
    excluded = models.PositiveIntegerField(default=0)
    computed_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["funnel", "hour", "app", "carrier", "country", "price_point", "flow"],
                name="funnel_rollup_unique",
            )
        ]
        indexes = [models.Index(fields=["funnel", "hour"])]

    def __str__(self) -> str:
        return f"{self.funnel_id} {self.hour:%Y-%m-%d %H}:00"


class FunnelRollupHour(models.Model):
    """An hour whose rollups are computed (with or without journeys), and the times between steps of
    its journeys: the rollups of a period can be read when every hour of it has one of these."""

    funnel = models.ForeignKey(FunnelDefinition, on_delete=models.CASCADE, related_name="rollup_hours")
    hour = models.DateTimeField()
    # {"k": {"bucket": [journeys, seconds]}}: the whole seconds from step k-1 to step k (k from 2) as
    # `funnel.selectors` counts them, per bucket of `GAP_BUCKET_BOUNDS` (1-based), with their sum.
    gaps = models.JSONField(default=dict)
    # {"error code": failed charges}: the funnel's app's charge_failed events that happened in the hour.
    failures = models.JSONField(default=dict)
    computed_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["funnel", "hour"], name="funnel_rollup_hour_unique")]

    def __str__(self) -> str:
        return f"{self.funnel_id} {self.hour:%Y-%m-%d %H}:00"


class AnalyticsShipment(models.Model):
    """How far one source table has been shipped to the analytics tier (ClickHouse): the last row sent,
    moved only after ClickHouse has taken the batch, so that a restart resumes where shipping stopped."""

    source = models.CharField(max_length=40, primary_key=True)
    # Append-only sources go by id; changing ones by (updated_at, id).
    last_id = models.BigIntegerField(default=0)
    last_updated_at = models.DateTimeField(null=True, blank=True)
    rows = models.BigIntegerField(default=0, help_text="Rows shipped so far (a row sent again counts again).")
    # Every row of the source written before this is in ClickHouse: now minus this is the lag.
    shipped_at = models.DateTimeField(null=True, blank=True, help_text="Rows written before this are shipped.")
    # Order time (received_at, updated_at) of the newest row shipped.
    shipped_up_to = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return self.source


class FunnelRollupDay(models.Model):
    """The rollups of a UTC day's hours added up (levels reached per breakdown value, times between steps,
    failure codes), rebuilt whenever one of its hours is, so that a long period reads one row per day
    instead of 24 hour rows and hundreds of cells."""

    funnel = models.ForeignKey(FunnelDefinition, on_delete=models.CASCADE, related_name="rollup_days")
    day = models.DateTimeField()  # midnight UTC
    gaps = models.JSONField(default=dict)  # as FunnelRollupHour.gaps
    failures = models.JSONField(default=dict)
    # {"carrier": {"value": [journeys per level reached..., excluded]}, ...}: the day's FunnelRollup
    # cells added up per value of each breakdown column (app_id, carrier, country, price_point, flow).
    reached = models.JSONField(default=dict)
    computed_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["funnel", "day"], name="funnel_rollup_day_unique")]

    def __str__(self) -> str:
        return f"{self.funnel_id} {self.day:%Y-%m-%d}"
