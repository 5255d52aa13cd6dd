"""The payments' metrics: transitions as they happen; the outbox's lag and the webhook queue at scrape time."""

from collections.abc import Iterator

from django.db.models import Min
from django.utils import timezone

from payments.events import PaymentStatusChanged
from payments.models import OutboxMessage
from payments.services.resolver import unknown_by_carrier
from payments.services.webhooks import QUEUE as WEBHOOK_QUEUE
from playpay import metrics


def count_transition(event: PaymentStatusChanged) -> None:
    # Counted when the change is made; a change rolled back afterwards is counted all the same (rare).
    metrics.PAYMENT_TRANSITIONS.labels(status=event.to_status, carrier=event.payment.carrier.slug).inc()


def outbox_lag_seconds() -> float:
    """Age of the oldest message not yet handed to the broker; 0 when there is none.

    One read of the partial index on unsent messages (`outbox_unsent_idx`), whatever the outbox's size.
    """
    oldest = OutboxMessage.objects.filter(sent_at__isnull=True).aggregate(oldest=Min("created_at"))["oldest"]
    return max((timezone.now() - oldest).total_seconds(), 0.0) if oldest else 0.0


def outcomes_unknown() -> Iterator[tuple[dict[str, str], float]]:
    for operation, carrier, count, _oldest in unknown_by_carrier():
        yield {"operation": operation, "carrier": carrier}, float(count)


def outcome_unknown_oldest_seconds() -> Iterator[tuple[dict[str, str], float]]:
    now = timezone.now()
    for operation, carrier, _count, oldest in unknown_by_carrier():
        yield {"operation": operation, "carrier": carrier}, max((now - oldest).total_seconds(), 0.0)


def register() -> None:
    metrics.register_queues(lambda: [WEBHOOK_QUEUE])
    metrics.register_gauge(
        "playpay_outbox_lag_seconds",
        "Age in seconds of the oldest task in the outbox not yet sent to the broker (0: none waiting).",
        outbox_lag_seconds,
    )
    metrics.register_gauge(
        "playpay_outcomes_unknown",
        "Charges, refunds and reversals whose outcome the carrier has not stated yet, by operation and carrier.",
        outcomes_unknown,
        labels=("operation", "carrier"),
    )
    metrics.register_gauge(
        "playpay_outcome_unknown_oldest_seconds",
        "Age in seconds of the oldest unknown outcome, by operation and carrier.",
        outcome_unknown_oldest_seconds,
        labels=("operation", "carrier"),
    )
