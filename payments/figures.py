"""The ledger's figures of a payment: what its entries did to each account, read the way finance reads it.

Each figure is a signed sum of ledger lines by the kind of their account (payments.services.ledger posts them).
For any set of lines they add up so that

    gross = tax + carrier_share + net,   net = app_payable + platform_revenue.

gross: what players paid and kept paid (what the carrier collects, less what the platform paid back itself);
platform_revenue: the platform's own part, after the carrier's share. A figure of a ledger line is that line's
part of it, so the lines of a payment add up to the payment's figures.

A payment keeps its figures on its own row (`Payment.gross_minor`, ...), added to in the transaction that posts
each of its entries, so that a report of many payments reads them without grouping their lines. The lines stay
what the figures are made of: `figure_sums()` sums them for the exports of refunds and reversals, and
`ledger_aggregates()` for the recount that fills or mends the kept figures.
"""

from collections.abc import Mapping
from typing import Any

from django.db.models import BigIntegerField, Case, Expression, F, Max, Q, Sum, Value, When

from payments.models import LedgerEntry

# Figure -> the sign each account kind's lines count with.
FIGURES: dict[str, dict[str, int]] = {
    "gross": {"carrier_receivable": 1, "carrier_share": 1, "platform_refunds_paid": 1},
    "tax": {"tax_payable": -1},
    "carrier_share": {"carrier_share": 1},
    "platform_revenue": {"platform_revenue": -1, "carrier_share": -1},
    "app_payable": {"app_payable": -1},
    "net": {"carrier_receivable": 1, "platform_refunds_paid": 1, "tax_payable": 1},
}
# What a payment keeps besides its figures: everything paid back (by the carrier or the platform, what refunds
# and a reversal took off the gross), and when its last entry of each kind was posted.
PAID_BACK = "paid_back_minor"
POSTED_AT: dict[str, str] = {
    LedgerEntry.Kind.CHARGE: "charged_at",
    LedgerEntry.Kind.REFUND: "refunded_at",
    LedgerEntry.Kind.REVERSAL: "reversed_at",
}
# The payment's fields kept from its ledger, sums first.
KEPT_SUMS = (*(f"{name}_minor" for name in FIGURES), PAID_BACK)
KEPT = (*KEPT_SUMS, *POSTED_AT.values())


def account_kind(account: str) -> str:
    """`carrier_share:acme-uk` -> `carrier_share`: the account without the carrier, country or app it is for."""
    return account.partition(":")[0]


def is_kind(kind: str) -> Q:
    """Lines on accounts of this kind (`platform_revenue`, or `carrier_share:<carrier>`)."""
    return Q(account=kind) | Q(account__startswith=f"{kind}:")


def line_part(signs: Mapping[str, int]) -> Expression:
    """A ledger line's part of the figure counted with `signs` (account kind -> sign), in SQL."""
    return Case(
        *(When(is_kind(kind), then=F("amount_minor") * sign) for kind, sign in signs.items()),
        default=Value(0),
        output_field=BigIntegerField(),
    )


def entry_figures(*, kind: str, lines: Mapping[str, int]) -> dict[str, int]:
    """What an entry of `kind` with these lines (account -> amount) adds to its payment's kept sums."""
    by_kind: dict[str, int] = {}
    for account, amount in lines.items():
        by_kind[account_kind(account)] = by_kind.get(account_kind(account), 0) + amount
    added = {
        f"{name}_minor": sum(by_kind.get(account, 0) * sign for account, sign in signs.items())
        for name, signs in FIGURES.items()
    }
    added[PAID_BACK] = 0 if kind == LedgerEntry.Kind.CHARGE else -added["gross_minor"]
    return added


def figure_sums() -> dict[str, Sum]:
    """`<figure>_minor` -> the figure summed over ledger lines (NULL when there is none)."""
    return {f"{name}_minor": Sum(line_part(signs)) for name, signs in FIGURES.items()}


def ledger_aggregates() -> dict[str, Any]:
    """The kept fields as aggregates over a payment's ledger lines (a sum is NULL when there is none): what
    `entry_figures` adds up to, entry by entry."""
    return {
        **figure_sums(),
        PAID_BACK: Sum(-line_part(FIGURES["gross"]), filter=~Q(entry__kind=LedgerEntry.Kind.CHARGE)),
        **{field: Max("entry__created_at", filter=Q(entry__kind=kind)) for kind, field in POSTED_AT.items()},
    }
