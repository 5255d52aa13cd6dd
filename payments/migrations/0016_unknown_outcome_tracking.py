"""Refunds and reversals track an unknown outcome as payments do; those left pending are picked up."""

from typing import Any

import django.core.validators
from django.db import migrations, models
from django.db.models import F
from django.utils import timezone


def track_pending(apps: Any, schema_editor: Any) -> None:
    """Refunds and reversals pending at a carrier: checked by the resolver job from now on.

    Their clock starts now, not at their creation: an old one is reported only if it is still unknown
    OUTCOME_ALERT_AFTER_MINUTES after the upgrade, not all at once by the first run. A pending reversal may
    have reached the carrier (before this, it was not recorded when it was asked), so it is taken as asked
    when it was created: it is checked where the protocol can check a reversal, else it waits, reported
    when unknown too long, and it is never sent again blindly.
    """
    now = timezone.now()
    Refund = apps.get_model("payments", "Refund")
    Refund.objects.filter(status="pending", via_carrier=True).update(outcome_unknown_since=now)
    Reversal = apps.get_model("payments", "Reversal")
    Reversal.objects.filter(status="pending", via_carrier=True).update(
        outcome_unknown_since=now, carrier_requested_at=F("created_at")
    )


class Migration(migrations.Migration):
    dependencies = [
        ("payments", "0015_ledger_refuses_truncate"),
    ]

    operations = [
        migrations.AddField(
            model_name="payment",
            name="next_resolve_at",
            field=models.DateTimeField(
                blank=True,
                help_text="When the carrier is next asked about an unknown outcome.",
                null=True,
                verbose_name="next check",
            ),
        ),
        migrations.AddField(
            model_name="payment",
            name="outcome_alerted_at",
            field=models.DateTimeField(
                blank=True,
                help_text="When the outcome, unknown for too long, was reported as an error.",
                null=True,
                verbose_name="reported at",
            ),
        ),
        migrations.AddField(
            model_name="payment",
            name="resolve_attempts",
            field=models.SmallIntegerField(
                default=0,
                help_text="Checks made with the carrier since the outcome became unknown.",
                validators=[django.core.validators.MinValueValidator(0)],
                verbose_name="checks made",
            ),
        ),
        migrations.AddField(
            model_name="refund",
            name="next_resolve_at",
            field=models.DateTimeField(
                blank=True,
                help_text="When the carrier is next asked about an unknown outcome.",
                null=True,
                verbose_name="next check",
            ),
        ),
        migrations.AddField(
            model_name="refund",
            name="outcome_alerted_at",
            field=models.DateTimeField(
                blank=True,
                help_text="When the outcome, unknown for too long, was reported as an error.",
                null=True,
                verbose_name="reported at",
            ),
        ),
        migrations.AddField(
            model_name="refund",
            name="outcome_unknown_since",
            field=models.DateTimeField(
                blank=True, help_text="Set while the carrier has not stated the outcome of our last call.", null=True
            ),
        ),
        migrations.AddField(
            model_name="refund",
            name="resolve_attempts",
            field=models.SmallIntegerField(
                default=0,
                help_text="Checks made with the carrier since the outcome became unknown.",
                validators=[django.core.validators.MinValueValidator(0)],
                verbose_name="checks made",
            ),
        ),
        migrations.AddField(
            model_name="reversal",
            name="carrier_requested_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="reversal",
            name="next_resolve_at",
            field=models.DateTimeField(
                blank=True,
                help_text="When the carrier is next asked about an unknown outcome.",
                null=True,
                verbose_name="next check",
            ),
        ),
        migrations.AddField(
            model_name="reversal",
            name="outcome_alerted_at",
            field=models.DateTimeField(
                blank=True,
                help_text="When the outcome, unknown for too long, was reported as an error.",
                null=True,
                verbose_name="reported at",
            ),
        ),
        migrations.AddField(
            model_name="reversal",
            name="outcome_unknown_since",
            field=models.DateTimeField(
                blank=True, help_text="Set while the carrier has not stated the outcome of our last call.", null=True
            ),
        ),
        migrations.AddField(
            model_name="reversal",
            name="resolve_attempts",
            field=models.SmallIntegerField(
                default=0,
                help_text="Checks made with the carrier since the outcome became unknown.",
                validators=[django.core.validators.MinValueValidator(0)],
                verbose_name="checks made",
            ),
        ),
        migrations.AlterField(
            model_name="payment",
            name="outcome_unknown_since",
            field=models.DateTimeField(
                blank=True, help_text="Set while the carrier has not stated the outcome of our last call.", null=True
            ),
        ),
        migrations.AddIndex(
            model_name="refund",
            index=models.Index(
                condition=models.Q(("outcome_unknown_since__isnull", False)),
                fields=["next_resolve_at"],
                name="refund_outcome_unknown_idx",
            ),
        ),
        migrations.AddIndex(
            model_name="reversal",
            index=models.Index(
                condition=models.Q(("outcome_unknown_since__isnull", False)),
                fields=["next_resolve_at"],
                name="reversal_outcome_unknown_idx",
            ),
        ),
        migrations.RunPython(track_pending, migrations.RunPython.noop),
    ]
