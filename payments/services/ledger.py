"""The double-entry ledger: every charge, refund and reversal posts balanced lines.

Amounts are signed minor units: debits positive, credits negative; the lines of an
entry sum to zero per currency. Lines are never changed or deleted (the models
refuse, and on PostgreSQL so do triggers); a correction is a new, opposite entry.

A charge of A (tax included at the country's VAT rate) is split into tax, the
carrier's share of the net, the app's share of what remains, and the platform's:

    DR carrier_receivable:<carrier>   A - carrier share   (the carrier collects A and keeps its share)
    DR carrier_share:<carrier>        carrier share       (cost of the sale)
    CR tax_payable:<country>          tax
    CR app_payable:<app>              app share
    CR platform_revenue               net - app share

A refund or a reversal of R posts one of two entries, by who pays the player back:

- Through the carrier (`via_carrier`): the carrier pays R back out of what it collected, so it owes
  us R less and keeps no share of R. The entry is the opposite of R's share of the charge, except
  that the carrier's two lines move by exactly R together (they are what the carrier settles):

      CR carrier_share:<carrier>        R's share of the carrier share
      CR carrier_receivable:<carrier>   R - the above
      DR tax_payable:<country>          R's share of the tax
      DR app_payable:<app>              R's share of the app share
      DR platform_revenue               the rest (rounding leftovers included)

- By the platform (the carrier cannot refund or reverse): the carrier still collects and settles
  the whole charge, so its lines do not move. The tax stays too: the carrier charged it on the whole
  amount and its bill is not corrected. The platform pays R from its own funds; the app gives up
  R's share of its share and the platform absorbs the rest:

      CR platform_refunds_paid          R                  (paid to the player by the platform)
      DR app_payable:<app>              R's share of the app share
      DR platform_revenue               the rest

Shares are cumulative (what all refunds so far undo, less what earlier ones undid), so refunds
adding up to the whole amount undo their lines of the charge exactly.
"""

from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal

from django.db.models import QuerySet, Sum

from payments.errors import ChargeNotInLedger
from payments.events import PaymentStatusChanged
from payments.models import LedgerEntry, LedgerLine, Payment, PaymentStatus, Refund, Reversal

PLATFORM_REVENUE = "platform_revenue"
PLATFORM_REFUNDS_PAID = "platform_refunds_paid"


@dataclass(frozen=True)
class Split:
    tax: int
    carrier_share: int
    app_share: int

    @classmethod
    def of(cls, payment: Payment) -> "Split":
        amount = Decimal(payment.amount_minor)
        country = payment.carrier.country
        tax = Decimal(0)
        if payment.price_point.tax_included and country.vat_rate:
            tax = amount * country.vat_rate / (100 + country.vat_rate)
        tax_minor = _round(tax)
        net = payment.amount_minor - tax_minor
        carrier_share = _round(Decimal(net) * payment.carrier.revenue_share)
        app_share = _round(Decimal(net - carrier_share) * payment.app.revenue_share)
        return cls(tax=tax_minor, carrier_share=carrier_share, app_share=app_share)


def _round(value: Decimal) -> int:
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def charge_lines(payment: Payment) -> dict[str, int]:
    split = Split.of(payment)
    net = payment.amount_minor - split.tax
    carrier = payment.carrier.slug
    return {
        f"carrier_receivable:{carrier}": payment.amount_minor - split.carrier_share,
        f"carrier_share:{carrier}": split.carrier_share,
        f"tax_payable:{payment.carrier.country_id}": -split.tax,
        f"app_payable:{payment.app.public_id}": -split.app_share,
        PLATFORM_REVENUE: -(net - split.app_share),
    }


def _post(
    *, kind: str, payment: Payment, lines: dict[str, int], memo: str, refund: Refund | None = None
) -> LedgerEntry:
    if sum(lines.values()) != 0:
        raise ValueError(f"unbalanced {kind} entry for payment {payment.pk}: {lines}")
    month = payment.created_at  # the partition key of the entry and its lines
    entry = LedgerEntry.objects.create(
        kind=kind, payment=payment, payment_created_at=month, refund=refund, memo=memo[:255]
    )
    LedgerLine.objects.bulk_create(
        LedgerLine(
            entry=entry, payment_created_at=month, account=account, amount_minor=amount, currency=payment.currency
        )
        for account, amount in lines.items()
        if amount
    )
    return entry


def on_status_changed(event: PaymentStatusChanged) -> None:
    """A charge is posted in the transaction that marks its payment succeeded."""
    if event.to_status == PaymentStatus.SUCCEEDED:
        post_charge(event.payment)


def post_charge(payment: Payment) -> LedgerEntry:
    """Post a successful charge; call in the transaction that marks the payment succeeded."""
    return _post(kind=LedgerEntry.Kind.CHARGE, payment=payment, lines=charge_lines(payment), memo="charge")


CHARGE_ARCHIVED = (
    "This payment's charge is no longer in the ledger (its month was archived): it cannot be refunded or reversed here."
)


def _charge_lines(payment: Payment) -> QuerySet[LedgerLine]:
    # With the payment's month: on PostgreSQL only its partitions are read.
    return LedgerLine.objects.filter(
        payment_created_at=payment.created_at,
        entry__payment_created_at=payment.created_at,
        entry__payment=payment,
        entry__kind=LedgerEntry.Kind.CHARGE,
    )


def charge_refusal(payment: Payment) -> str | None:
    """Why no refund or reversal of the succeeded `payment` can be posted, or None: its charge is gone from the
    ledger (the month's ledger partitions were archived), and what undoes it is computed from its lines."""
    return None if _charge_lines(payment).exists() else CHARGE_ARCHIVED


def _charge_entry_lines(payment: Payment) -> dict[str, int]:
    charge = {line.account: line.amount_minor for line in _charge_lines(payment)}
    if not charge:
        # Undoing nothing would post the whole amount to the platform's accounts alone.
        raise ChargeNotInLedger(CHARGE_ARCHIVED)
    return charge


def _undo_lines(payment: Payment, *, before: int, after: int, via_carrier: bool) -> dict[str, int]:
    """The lines that pay the player back what takes the refunded amount from `before` to `after`."""
    return undo_lines(payment, charge=_charge_entry_lines(payment), before=before, after=after, via_carrier=via_carrier)


def undo_lines(
    payment: Payment, *, charge: dict[str, int], before: int, after: int, via_carrier: bool
) -> dict[str, int]:
    """As `_undo_lines`, from the lines of the payment's charge entry (`charge`, account -> amount): what a
    refund or reversal posts, for callers that post many at once (the volume generator)."""
    total = payment.amount_minor

    def undo(account: str) -> int:
        amount = charge.get(account, 0)
        return -(amount * after // total - amount * before // total)

    carrier = payment.carrier.slug
    names = {
        "carrier_share": f"carrier_share:{carrier}",
        "carrier_receivable": f"carrier_receivable:{carrier}",
        "tax_payable": f"tax_payable:{payment.carrier.country_id}",
        "app_payable": f"app_payable:{payment.app.public_id}",
        # The charge's own account names win: a carrier's slug may have changed since.
        **{account.partition(":")[0]: account for account in charge},
    }
    paid_back = after - before
    app = names["app_payable"]
    if via_carrier:
        share = undo(names["carrier_share"])
        lines = {
            names["carrier_share"]: share,
            names["carrier_receivable"]: -paid_back - share,
            names["tax_payable"]: undo(names["tax_payable"]),
            app: undo(app),
        }
    else:
        lines = {PLATFORM_REFUNDS_PAID: -paid_back, app: undo(app)}
    # The platform's revenue takes the rest (rounding leftovers included), which balances the entry.
    lines[PLATFORM_REVENUE] = -sum(lines.values())
    return lines


def post_refund(refund: Refund, *, refunded_before: int) -> LedgerEntry:
    """Post a succeeded refund; `refunded_before` is what the payment's earlier succeeded refunds paid back."""
    payment = refund.payment
    lines = _undo_lines(
        payment,
        before=refunded_before,
        after=refunded_before + refund.amount_minor,
        via_carrier=refund.via_carrier,
    )
    return _post(
        kind=LedgerEntry.Kind.REFUND, payment=payment, refund=refund, lines=lines, memo=f"refund: {refund.reason}"
    )


def post_reversal(reversal: Reversal) -> LedgerEntry:
    """Post a succeeded reversal of a whole, unrefunded charge."""
    payment = reversal.payment
    lines = _undo_lines(payment, before=0, after=payment.amount_minor, via_carrier=reversal.via_carrier)
    return _post(kind=LedgerEntry.Kind.REVERSAL, payment=payment, lines=lines, memo=f"reversal: {reversal.reason}")


def balances(*, currency: str | None = None) -> list[tuple[str, str, int]]:
    """(account, currency, balance) for every account, derived from the lines."""
    lines = LedgerLine.objects.all()
    if currency:
        lines = lines.filter(currency=currency)
    rows = lines.values("account", "currency").annotate(balance=Sum("amount_minor")).order_by("account", "currency")
    return [(row["account"], row["currency"], int(row["balance"])) for row in rows]
