"""Alert rules: a threshold on a dataset measure over a trailing window, evaluated periodically.

A rule fires when the measure crosses its threshold (an open `AlertEvent`), and resolves when
it no longer does; a rule with a group-by dimension does so for each value separately. A
window with fewer than `min_rows` rows gives no verdict, so an idle carrier neither fires nor
resolves on no data.
"""

import logging
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from reporting.models import AlertEvent, AlertRule, DatasetField
from reporting.services.datasets import ROWS, DatasetQuery, DatasetQueryError, run_query

logger = logging.getLogger(__name__)

_COMPARE = {
    AlertRule.Comparison.LT: lambda value, threshold: value < threshold,
    AlertRule.Comparison.LTE: lambda value, threshold: value <= threshold,
    AlertRule.Comparison.GT: lambda value, threshold: value > threshold,
    AlertRule.Comparison.GTE: lambda value, threshold: value >= threshold,
}


def _filters(rule: AlertRule) -> dict[str, tuple[str, ...]]:
    if not isinstance(rule.filters, dict):
        raise DatasetQueryError('Filters are an object of dimension values, e.g. {"carrier": "camara-gb"}.')
    return {
        name: tuple(str(v) for v in value) if isinstance(value, list) else (str(value),)
        for name, value in rule.filters.items()
    }


def _query(rule: AlertRule, *, now: datetime) -> DatasetQuery:
    return DatasetQuery(
        measures=(rule.measure,),
        group_by=(rule.group_by,) if rule.group_by else (),
        filters=_filters(rule),
        since=now - timedelta(minutes=rule.window_minutes),
        until=now,
    )


def validate_alert_rule(rule: AlertRule) -> None:
    """The measure, group-by and filters must exist in the dataset; a money measure cannot be alerted on."""
    if not rule.dataset_id:
        return
    try:
        measure = rule.dataset.fields.get(name=rule.measure, role=DatasetField.Role.MEASURE)
    except DatasetField.DoesNotExist:
        names = list(rule.dataset.fields.filter(role="measure").values_list("name", flat=True))
        raise ValidationError({"measure": f"Choose one of the dataset's measures: {', '.join(names)}."}) from None
    if measure.data_type == DatasetField.DataType.MONEY:
        raise ValidationError({"measure": "Money is per currency: alert on a count or a ratio instead."})
    if not rule.dataset.time_field:
        raise ValidationError({"dataset": "Alerts need a dataset with a time field (the window)."})
    try:
        run_query(dataset=rule.dataset, query=_query(rule, now=timezone.now()))
    except DatasetQueryError as error:
        raise ValidationError({"filters": str(error)}) from error


@dataclass(frozen=True)
class Evaluation:
    fired: int
    resolved: int


def _window_values(rule: AlertRule, *, now: datetime) -> dict[str, tuple[Decimal | None, int]]:
    """Per group value (or "" without a group-by): the measure and the number of rows in the window."""
    query = _query(rule, now=now)
    rows = run_query(dataset=rule.dataset, query=replace(query, measures=(rule.measure, ROWS))).rows
    values: dict[str, tuple[Decimal | None, int]] = {}
    for row in rows:
        key = str(row.get(rule.group_by) or "") if rule.group_by else ""
        value = row[rule.measure]
        values[key] = (None if value is None else Decimal(str(value)), int(row[ROWS] or 0))
    return values


def evaluate_rule(*, rule_id: int, now: datetime | None = None) -> Evaluation:
    """Evaluate one rule now. Safe to run twice or concurrently: the rule row is locked while its events change."""
    now = now or timezone.now()
    rule = AlertRule.objects.select_related("dataset").get(pk=rule_id)
    values = _window_values(rule, now=now)
    fired = resolved = 0
    with transaction.atomic():
        AlertRule.objects.select_for_update().filter(pk=rule.pk).update(last_evaluated_at=now)
        open_events = {event.key: event for event in AlertEvent.objects.filter(rule=rule, resolved_at__isnull=True)}
        threshold = rule.threshold
        for key, (value, rows) in values.items():
            if value is None or rows < rule.min_rows:
                continue  # no verdict on (almost) no data
            breached = _COMPARE[AlertRule.Comparison(rule.comparison)](value, threshold)
            event = open_events.get(key)
            if breached and event is None:
                AlertEvent.objects.create(rule=rule, key=key, fired_at=now, fired_value=value)
                logger.warning("alert %s%s fired: %s", rule.name, f" [{key}]" if key else "", value)
                fired += 1
            elif not breached and event is not None:
                event.resolved_at, event.resolved_value = now, value
                event.save(update_fields=["resolved_at", "resolved_value"])
                logger.info("alert %s%s resolved: %s", rule.name, f" [{key}]" if key else "", value)
                resolved += 1
    return Evaluation(fired, resolved)


def evaluate_alert_rules(*, now: datetime | None = None) -> Evaluation:
    """Evaluate every active rule; one broken rule is logged and does not stop the others."""
    fired = resolved = 0
    for rule_id in AlertRule.objects.filter(is_active=True).values_list("pk", flat=True):
        try:
            result = evaluate_rule(rule_id=rule_id, now=now)
        except DatasetQueryError:
            logger.exception("alert rule %s cannot be evaluated", rule_id)
            continue
        fired += result.fired
        resolved += result.resolved
    return Evaluation(fired, resolved)


def open_alerts() -> list[AlertEvent]:
    return list(AlertEvent.objects.filter(resolved_at__isnull=True).select_related("rule")[:50])


def recent_alert_events(*, limit: int = 10) -> list[AlertEvent]:
    return list(AlertEvent.objects.select_related("rule")[:limit])


def describe(event: AlertEvent) -> dict[str, Any]:
    rule = event.rule
    return {
        "rule": rule.name,
        "key": event.key,
        "condition": f"{rule.condition} over {rule.window_minutes} min",
        "state": "firing" if event.is_open else "resolved",
        "fired_at": event.fired_at.isoformat(),
        "fired_value": float(event.fired_value),
        "resolved_at": event.resolved_at.isoformat() if event.resolved_at else None,
        "resolved_value": float(event.resolved_value) if event.resolved_value is not None else None,
    }
