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
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from django.db import connection, transaction
from django.db.models import F, Max, Min, OuterRef, QuerySet, Subquery, Sum, Value
from django.db.models.functions import Coalesce, Greatest

from payments import figures
from payments.errors import ChargeNotInLedger
from payments.events import PaymentStatusChanged
from payments.models import LedgerEntry, LedgerLine, Payment, PaymentStatus, Refund, Reversal
from playpay.partitions import add_months, month_bounds, month_start

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
    _keep_figures(payment, entry=entry, lines=lines)
    return entry


def _keep_figures(payment: Payment, *, entry: LedgerEntry, lines: dict[str, int]) -> None:
    """Add the entry's figures to those its payment keeps, in the entry's transaction (payments.figures). The
    update adds to what the row holds, whatever the instance read; its time of that kind becomes the entry's
    unless a later one is there already (as the lines' latest entry is); `updated_at` stays (the payment did
    not change, its ledger did)."""
    added = figures.entry_figures(kind=entry.kind, lines=lines)
    posted_at, at = figures.POSTED_AT[entry.kind], entry.created_at
    changes: dict[str, Any] = {name: F(name) + amount for name, amount in added.items() if amount}
    changes[posted_at] = Greatest(Coalesce(posted_at, Value(at)), Value(at))
    Payment.objects.filter(pk=payment.pk, created_at=payment.created_at).update(**changes)
    deferred = payment.get_deferred_fields()  # read after the update, they would count the entry twice
    for name, amount in added.items():
        if name not in deferred:
            setattr(payment, name, getattr(payment, name) + amount)
    if posted_at not in deferred:
        setattr(payment, posted_at, max(getattr(payment, posted_at) or at, at))


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


# Payments per transaction of a recount (their ids, within a month): the ones it mends stay locked that long.
RECOUNT_PAYMENTS = 10_000


def recount_payment_figures(*, created_from: datetime | None = None, created_before: datetime | None = None) -> int:
    """Set the kept figures of the payments created from `created_from` to before `created_before` (by default
    all of them) to what their ledger lines add up to; the number of payments that held other figures. Fills
    them for payments posted before they were kept, and mends any gone astray.

    It runs beside the payments' own work: a transaction per RECOUNT_PAYMENTS payments of a UTC month first
    locks those whose figures differ from their lines' (an entry posted meanwhile is waited for, as its poster
    locks the payment first), then sets them from their lines as they are once locked."""
    if created_from is None or created_before is None:
        span = Payment.objects.aggregate(first=Min("created_at"), last=Max("created_at"))
        if span["first"] is None:
            return 0
        created_from = created_from or span["first"]
        created_before = created_before or span["last"] + timedelta(microseconds=1)
    corrected = 0
    for start, end in _months(created_from, created_before):
        ids = Payment.objects.filter(created_at__gte=start, created_at__lt=end).aggregate(
            first=Min("pk"), last=Max("pk")
        )
        if ids["first"] is None:
            continue
        for first in range(ids["first"], ids["last"] + 1, RECOUNT_PAYMENTS):
            with transaction.atomic():
                corrected += _recount(start, end, ids=(first, first + RECOUNT_PAYMENTS), lock=True)
    return corrected


def fill_payment_figures(*, created_from: datetime, created_before: datetime) -> None:
    """Set the kept figures of payments no other transaction can see yet (a bulk load's, in its transaction)
    from their ledger lines: a statement per month, nothing locked."""
    for start, end in _months(created_from, created_before):
        _recount(start, end, ids=None, lock=False)


def _months(start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
    """[start, end) cut at the turns of UTC months (the payments' partitions) on PostgreSQL; whole elsewhere."""
    if connection.vendor != "postgresql":
        return [(start, end)]
    spans, month = [], month_start(start.astimezone(UTC))
    while (bounds := month_bounds(month))[0] < end:
        spans.append((max(bounds[0], start), min(bounds[1], end)))
        month = add_months(month, 1)
    return spans


def _recount(start: datetime, end: datetime, *, ids: tuple[int, int] | None, lock: bool) -> int:
    """Set the figures of the payments created from `start` to before `end` (with ids from ids[0] to before
    ids[1]) that differ from their lines'; how many did."""
    lines = LedgerLine.objects.filter(
        payment_created_at__gte=start,
        payment_created_at__lt=end,
        entry__payment_created_at__gte=start,
        entry__payment_created_at__lt=end,
    ).order_by()
    payments = Payment.objects.filter(created_at__gte=start, created_at__lt=end)
    if ids is not None:
        lines = lines.filter(entry__payment_id__gte=ids[0], entry__payment_id__lt=ids[1])
        payments = payments.filter(pk__gte=ids[0], pk__lt=ids[1])
    sums, kept = figures.KEPT_SUMS, figures.KEPT
    if connection.vendor == "postgresql":
        # Set-based: the lines grouped by payment once, joined to the payments; only rows that differ are written.
        grouped = lines.values(k=F("entry__payment_id"), m=F("payment_created_at")).annotate(
            **figures.ledger_aggregates()
        )
        grouped_sql, grouped_params = grouped.query.sql_with_params()
        value = {name: f"coalesce(l.{name}, 0)" if name in sums else f"l.{name}" for name in kept}
        grouped_as_l = f"({grouped_sql}) AS l"
        where = (
            "p.id = l.k AND p.created_at = l.m AND p.created_at >= %s AND p.created_at < %s AND p.id >= %s "
            f"AND p.id < %s AND ({', '.join(f'p.{name}' for name in kept)}) "
            f"IS DISTINCT FROM ({', '.join(value[name] for name in kept)})"
        )
        params = (*grouped_params, start, end, *(ids or (0, 2**63 - 1)))
        with connection.cursor() as cursor:
            if lock:
                # A statement of its own, so that the UPDATE's snapshot, taken after the locks, has the lines
                # of any entry whose poster held one of them.
                lock_them = f"SELECT p.id FROM payments_payment p, {grouped_as_l} WHERE {where} FOR UPDATE OF p"  # noqa: S608
                cursor.execute(lock_them, params)
                if not cursor.fetchall():
                    return 0
            assignments = ", ".join(f"{name} = {value[name]}" for name in kept)
            # Only the models' own columns and Django's compiled query; every value is a parameter.
            update = f"UPDATE payments_payment p SET {assignments} FROM {grouped_as_l} WHERE {where}"  # noqa: S608
            cursor.execute(update, params)
            return int(cursor.rowcount)
    # Elsewhere (SQLite) payment by payment, each from its own lines.
    counted = {
        name: Subquery(
            lines.filter(entry__payment=OuterRef("pk"))
            .values("entry__payment")
            .annotate(value=aggregate)
            .values("value")
        )
        for name, aggregate in figures.ledger_aggregates().items()
    }
    posted = LedgerEntry.objects.filter(payment_created_at__gte=start, payment_created_at__lt=end)
    corrected = 0
    for row in (
        payments.filter(pk__in=posted.values("payment_id"))
        .annotate(**{f"counted_{name}": value for name, value in counted.items()})
        .values("pk", *kept, *(f"counted_{name}" for name in kept))
    ):
        right = {name: row[f"counted_{name}"] or (0 if name in sums else None) for name in kept}
        if any(row[name] != right[name] for name in kept):
            Payment.objects.filter(pk=row["pk"]).update(**right)
            corrected += 1
    return corrected
