"""Reads of payments for staff screens: a payment's whole story, in order."""

from dataclasses import dataclass
from datetime import UTC, datetime

from journal.models import StaffAction
from journal.selectors import summary as journal_summary
from journal.selectors import timeline as journal_timeline
from payments.models import CarrierNotification, LedgerEntry, Payment, WebhookAttempt
from payments.services.refunds import refunds_of, reversals_of
from playpay.money import format_money, signed_money

# What the journal alone knows; the rest (staff actions, webhooks, callbacks) is read from its own table,
# which also holds what the journal has not stored yet.
JOURNAL_KINDS = ("api_request", "carrier_call")


@dataclass(frozen=True)
class TimelineEvent:
    at: datetime
    kind: str  # status, api call, carrier call, carrier callback, webhook, ledger, refund, reversal, staff
    summary: str

    @property
    def when(self) -> str:
        return f"{self.at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"


def payment_timeline(payment: Payment) -> list[TimelineEvent]:
    """Everything that happened to `payment`, oldest first: status changes, API and carrier calls, carrier
    callbacks, webhooks to the app, ledger entries, refunds, reversals and staff actions."""
    month = payment.created_at  # rows partitioned by the payment's month: only its partition is read
    events = [
        TimelineEvent(
            change.created_at,
            "status",
            f"{change.from_status or '—'} → {change.to_status} by {change.actor}"
            + (f": {change.reason}" if change.reason else ""),
        )
        for change in payment.history.filter(payment_created_at=month)
    ]
    for document in journal_timeline(payment_id=str(payment.public_id)):
        if document.get("kind") in JOURNAL_KINDS:
            at = datetime.fromisoformat(document["occurred_at"])
            events.append(TimelineEvent(at, str(document["kind"]).replace("_", " "), journal_summary(document)))
    if payment.carrier_reference:
        events += [
            TimelineEvent(n.received_at, "carrier callback", f"{n.kind} {n.outcome} ({n.raw_code}): {n.result}")
            for n in CarrierNotification.objects.filter(
                carrier=payment.carrier, carrier_reference=payment.carrier_reference
            )
        ]
    events += [
        TimelineEvent(
            attempt.attempted_at,
            "webhook",
            f"{attempt.delivery.event_type} → "
            + (f"HTTP {attempt.status_code}" if attempt.status_code else attempt.error or "no answer")
            + f" ({attempt.duration_ms} ms)",
        )
        for attempt in WebhookAttempt.objects.filter(delivery__payment=payment).select_related("delivery")
    ]
    for entry in LedgerEntry.objects.filter(payment=payment, payment_created_at=month).prefetch_related("lines"):
        lines = ", ".join(
            f"{line.account} {signed_money(line.amount_minor, line.currency)}" for line in entry.lines.all()
        )
        events.append(TimelineEvent(entry.created_at, "ledger", f"{entry.kind} #{entry.pk}: {lines}"))
    for refund in refunds_of(payment):
        how = "through the carrier" if refund.via_carrier else "by the platform"
        events.append(
            TimelineEvent(
                refund.created_at,
                "refund",
                f"{format_money(refund.amount_minor, refund.currency)} {how}, {refund.status}, "
                f"asked by {refund.requested_by}: {refund.reason}",
            )
        )
    for reversal in reversals_of(payment):
        events.append(
            TimelineEvent(
                reversal.created_at,
                "reversal",
                f"{reversal.status}, asked by {reversal.requested_by}: {reversal.reason}",
            )
        )
    for action in StaffAction.objects.filter(object_type="payment", object_id=str(payment.public_id)).select_related(
        "user"
    ):
        events.append(
            TimelineEvent(
                action.created_at, "staff", f"{action.user}: {action.action} — {action.reason} → {action.outcome}"
            )
        )
    events.sort(key=lambda event: event.at)
    return events
