"""The monthly spend cap of a carrier, checked before each subscription charge (the opt-in and each renewal).

What one number was charged on the carrier this calendar month (`payments.selectors.monthly_spend`: every app,
subscriptions and one-off payments alike, less refunds, with the payments under way) plus the charge must not
exceed the carrier's `monthly_spend_cap_minor`. An opt-in above it is refused (`SpendingCapReached`); a renewal
above it is not sent to the carrier and fails as `spending_limit` (`services.renewals`).
"""

import logging
from datetime import datetime
from zlib import crc32

from django.db import connection, transaction

from carriers.models import Carrier
from payments.selectors import monthly_spend

logger = logging.getLogger(__name__)

_LOCK_SPACE = 0x5C4B  # the first key of the advisory locks of spend caps (the second: the carrier and number)


class CapBusy(Exception):
    """Another transaction is deciding a charge of the same number on the same carrier right now."""


def within_spend_cap(
    *, msisdn: str, carrier: Carrier, amount_minor: int, currency: str, now: datetime, wait: bool = True
) -> bool:
    """Whether the charge keeps the number under the carrier's cap. With a cap, the caller's transaction holds
    the number's cap lock until it ends, so that two charges decided at once (two opt-ins, two engines' batches)
    are decided one after the other, each seeing the other's payment. `wait=False` (the renewal engine, which
    holds several numbers' locks in a batch and must not deadlock): raises CapBusy instead of waiting."""
    cap = carrier.monthly_spend_cap_minor
    if cap is None:
        return True
    if currency != carrier.country.currency:
        # The cap is in the carrier's country's currency: a charge in another one cannot be held to it, and a
        # cap is a regulator's rule, so it is refused (and said) rather than let through.
        logger.error(
            "spend cap of %s is in %s, a charge in %s cannot be checked against it: refused",
            carrier.slug,
            carrier.country.currency or "no currency",
            currency,
        )
        return False
    _lock(carrier, msisdn, wait=wait)
    return monthly_spend(msisdn=msisdn, carrier=carrier, currency=currency, now=now) + amount_minor <= cap


def _lock(carrier: Carrier, msisdn: str, *, wait: bool) -> None:
    if connection.vendor != "postgresql":
        return  # SQLite (the embedded default) has one writer at a time
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("the spend cap is checked inside the transaction that opens the charge")
    key = crc32(f"{carrier.pk}:{msisdn}".encode()) - 2**31  # an int4
    with connection.cursor() as cursor:
        if wait:
            cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [_LOCK_SPACE, key])
            return
        cursor.execute("SELECT pg_try_advisory_xact_lock(%s, %s)", [_LOCK_SPACE, key])
        if not cursor.fetchone()[0]:
            raise CapBusy(f"the spend cap of {carrier.slug} for this number is being decided by another charge")
