"""Rollup histograms of the times between steps move from whole seconds to log-spaced buckets (with
each bucket's sum of seconds), and each day's hours get a pre-added day row (levels per breakdown
value, histograms, failure codes): a month's report reads ~30 small rows instead of ~720 hour rows
and ~21,000 cells. Existing hour rows are converted exactly (a second falls in
one bucket); going back drops the rollups, which `refresh_funnel_rollups` computes again."""

import bisect
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import django.db.models.deletion
from django.db import migrations, models

# funnel.selectors.GAP_BUCKET_BOUNDS when this migration was written.
BOUNDS = (*range(64), *(((32 + sub) << (exponent - 5)) for exponent in range(6, 25) for sub in range(32)))


DIMENSIONS = ("app_id", "carrier", "country", "price_point", "flow")


def _day(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def to_buckets(apps: Any, schema_editor: Any) -> None:
    hours = apps.get_model("funnel", "FunnelRollupHour")
    days_model = apps.get_model("funnel", "FunnelRollupDay")
    days: dict[tuple[int, datetime], tuple[dict[str, dict[str, list[int]]], Counter[str]]] = {}
    batch = []
    for row in hours.objects.order_by("pk").iterator(chunk_size=2000):
        gaps: dict[str, dict[str, list[int]]] = {}
        for step, histogram in row.gaps.items():
            buckets: dict[int, list[int]] = {}
            for seconds, journeys in histogram.items():
                counts = buckets.setdefault(bisect.bisect_right(BOUNDS, int(seconds)), [0, 0])
                counts[0] += journeys
                counts[1] += int(seconds) * journeys
            gaps[step] = {str(bucket): counts for bucket, counts in sorted(buckets.items())}
        row.gaps = gaps
        batch.append(row)
        day_gaps, day_failures = days.setdefault((row.funnel_id, _day(row.hour)), ({}, Counter()))
        for step, buckets_of_step in gaps.items():
            into = day_gaps.setdefault(step, {})
            for bucket, (journeys, seconds) in buckets_of_step.items():
                counts = into.setdefault(bucket, [0, 0])
                counts[0] += journeys
                counts[1] += seconds
        day_failures.update(row.failures)
        if len(batch) >= 2000:
            hours.objects.bulk_update(batch, ["gaps"])
            batch = []
    hours.objects.bulk_update(batch, ["gaps"])
    # The day's cells per value of each breakdown column: [journeys per level reached..., excluded].
    reached: dict[tuple[int, datetime], dict[str, dict[str, list[int]]]] = {}
    cells = apps.get_model("funnel", "FunnelRollup").objects.values_list(
        "funnel_id", "hour", "reached", "excluded", *DIMENSIONS
    )
    for funnel_id, hour, levels, excluded, *values in cells.iterator(chunk_size=5000):
        day = reached.setdefault((funnel_id, _day(hour)), {})
        for dimension, value in zip(DIMENSIONS, values, strict=True):
            numbers = day.setdefault(dimension, {}).setdefault(str(value), [0] * (len(levels) + 1))
            for index, number in enumerate([*levels, excluded]):
                numbers[index] += number
    days_model.objects.bulk_create(
        days_model(
            funnel_id=funnel_id, day=day, gaps=gaps, failures=dict(failures), reached=reached.get((funnel_id, day), {})
        )
        for (funnel_id, day), (gaps, failures) in days.items()
    )


def drop_rollups(apps: Any, schema_editor: Any) -> None:
    apps.get_model("funnel", "FunnelRollup").objects.all().delete()
    apps.get_model("funnel", "FunnelRollupHour").objects.all().delete()


class Migration(migrations.Migration):
    dependencies = [("funnel", "0010_analytics_shipping")]

    operations = [
        migrations.CreateModel(
            name="FunnelRollupDay",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("day", models.DateTimeField()),
                ("gaps", models.JSONField(default=dict)),
                ("failures", models.JSONField(default=dict)),
                ("reached", models.JSONField(default=dict)),
                ("computed_at", models.DateTimeField(auto_now=True)),
                (
                    "funnel",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="rollup_days",
                        to="funnel.funneldefinition",
                    ),
                ),
            ],
            options={
                "constraints": [models.UniqueConstraint(fields=("funnel", "day"), name="funnel_rollup_day_unique")]
            },
        ),
        migrations.RunPython(to_buckets, drop_rollups),
    ]
