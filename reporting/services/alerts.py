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


def _for_carrier(events: Any, carrier: str) -> Any:
    """Only the events that may concern `carrier`: a rule for that carrier, or grouped by carrier and fired for
    it, or a rule over every carrier (which includes it). A rule for another carrier is left out."""
    if not carrier:
        return events
    kept = []
    for event in events:
        rule = event.rule
        scope = rule.filters.get("carrier") if isinstance(rule.filters, dict) else None
        scoped = [str(value) for value in scope] if isinstance(scope, list) else [str(scope)] if scope else []
        if scoped and carrier not in scoped:
            continue
        if rule.group_by == "carrier" and event.key and event.key != carrier:
            continue
        kept.append(event)
    return kept


def open_alerts(*, carrier: str = "") -> list[AlertEvent]:
    events = AlertEvent.objects.filter(resolved_at__isnull=True).select_related("rule__dataset")
    return list(_for_carrier(events[:200], carrier))[:50]


def recent_alert_events(*, limit: int = 10, carrier: str = "") -> list[AlertEvent]:
    events = AlertEvent.objects.select_related("rule__dataset")
    return list(_for_carrier(events[: limit * 20] if carrier else events[:limit], carrier))[:limit]


def _measure_type(rule: AlertRule) -> tuple[str, str]:
    """(data type, unit) of the rule's measure, as the dataset declares it."""
    field = rule.dataset.fields.filter(name=rule.measure).values_list("data_type", "unit").first()
    return field if field is not None else (DatasetField.DataType.DECIMAL, "")


def format_measure(value: Decimal | None, *, data_type: str, unit: str = "") -> str:
    """A measure's value as the dashboard shows it elsewhere: a ratio as a percentage with one decimal
    (0.692308 -> "69.2 %"), a count as a whole number, other numbers with at most 2 decimals and their unit."""
    if value is None:
        return "—"
    if data_type == DatasetField.DataType.RATIO:
        return f"{value * 100:.1f} %"
    if data_type == DatasetField.DataType.INTEGER:
        number = f"{value:.0f}"
    else:
        number = f"{value.quantize(Decimal('0.01')).normalize():f}"
    return f"{number} {unit}".strip()


def describe(event: AlertEvent) -> dict[str, Any]:
    rule = event.rule
    data_type, unit = _measure_type(rule)

    def shown(value: Decimal | None) -> str:
        return format_measure(value, data_type=data_type, unit=unit)

    condition = f"{rule.measure} {rule.get_comparison_display()} {shown(rule.threshold)}"
    return {
        "rule": rule.name,
        "key": event.key,
        "condition": f"{condition} over {rule.window_minutes} min",
        "state": "firing" if event.is_open else "resolved",
        "fired_at": event.fired_at.isoformat(),
        "fired_value": float(event.fired_value),
        "fired_value_text": shown(event.fired_value),
        "resolved_at": event.resolved_at.isoformat() if event.resolved_at else None,
        "resolved_value": float(event.resolved_value) if event.resolved_value is not None else None,
        "resolved_value_text": shown(event.resolved_value) if event.resolved_value is not None else None,
    }
