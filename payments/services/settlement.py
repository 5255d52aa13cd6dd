"""Settle charges and refunds of unknown outcome from what a carrier's settlement file says it collected.

Where a carrier has no status query (Parlay X, unless its gateway deduplicates referenceCode), a charge or
refund whose outcome is unknown is never sent again: only the carrier's settlement file can settle it.

The rule: for each carrier reference in the file, our payment of that carrier with that reference is settled
when the file's lines for it (their sum, all in the payment's currency) are exactly what the carrier should
have collected once its unknown operations succeeded:

- a `charging` payment of unknown outcome: the file's total is the amount charged. It succeeds.
- pending refunds through the carrier of unknown outcome, on a charged payment: the file's total is the
  amount charged less the refunds through the carrier that succeeded and all of those pending ones. They
  succeed.

Anything else is left alone: a file may be partial, so nothing is marked failed for being absent from it,
and a total that differs settles nothing (the reconciliation shows the mismatch). Each answer is applied
through the service that applies carrier answers, under the row's lock, so a second import of the same
file, or a callback racing it, settles it once.
"""

from collections.abc import Mapping
from dataclasses import dataclass

from django.db.models import Sum

from carriers.adapters.base import CarrierResult, Outcome
from carriers.models import Carrier
from payments.models import Payment, PaymentStatus, Refund
from payments.services.carrier_flow import record_charge_result
from payments.services.refunds import record_refund_result, refunds_of

# Payments whose refunds the carrier may still owe an answer on.
_REFUNDABLE = (PaymentStatus.SUCCEEDED, PaymentStatus.PARTIALLY_REFUNDED)


@dataclass(frozen=True)
class Collected:
    """The carrier's lines for one reference: their sum, and the currencies they are in."""

    amount_minor: int
    currencies: frozenset[str]


@dataclass(frozen=True)
class Settled:
    charges: int = 0
    refunds: int = 0


def settle_unknown_outcomes(*, carrier: Carrier, collected: Mapping[str, Collected], actor: str) -> Settled:
    """Settle, as succeeded, the charges and refunds of unknown outcome that `collected` (the carrier's
    settlement file, per carrier reference) shows collected, recording `actor` on what changes."""
    references = [reference for reference in collected if reference]
    if not references:
        return Settled()
    charges = refunds = 0
    unknown_charges = Payment.objects.filter(
        carrier=carrier,
        carrier_reference__in=references,
        status=PaymentStatus.CHARGING,
        outcome_unknown_since__isnull=False,
    ).values_list("pk", "created_at", "carrier_reference", "amount_minor", "currency")
    for payment_id, created_at, reference, amount, currency in unknown_charges:
        if collected[reference] == Collected(amount, frozenset({currency})):
            record_charge_result(
                payment_id=payment_id,
                result=CarrierResult(outcome=Outcome.SUCCEEDED, carrier_reference=reference),
                actor=actor,
            )
            charges += Payment.objects.filter(
                pk=payment_id, created_at=created_at, status=PaymentStatus.SUCCEEDED
            ).exists()
    unknown_refunds = Refund.objects.filter(
        payment__carrier=carrier,
        payment__carrier_reference__in=references,
        payment__status__in=_REFUNDABLE,
        status=Refund.Status.PENDING,
        via_carrier=True,
        outcome_unknown_since__isnull=False,
    ).select_related("payment")
    by_payment: dict[Payment, list[Refund]] = {}
    for refund in unknown_refunds.order_by("pk"):
        by_payment.setdefault(refund.payment, []).append(refund)
    for payment, pending in by_payment.items():
        refunded = (
            refunds_of(payment)
            .filter(status=Refund.Status.SUCCEEDED, via_carrier=True)
            .aggregate(total=Sum("amount_minor"))["total"]
            or 0
        )
        expected = payment.amount_minor - refunded - sum(refund.amount_minor for refund in pending)
        if collected[payment.carrier_reference] != Collected(expected, frozenset({payment.currency})):
            continue
        for refund in pending:
            record_refund_result(
                refund_id=refund.pk,
                result=CarrierResult(outcome=Outcome.SUCCEEDED, carrier_reference=refund.carrier_reference),
                claimed_at=refund.carrier_requested_at,
                actor=actor,
            )
            refunds += Refund.objects.filter(
                pk=refund.pk, payment_created_at=refund.payment_created_at, status=Refund.Status.SUCCEEDED
            ).exists()
    return Settled(charges=charges, refunds=refunds)
