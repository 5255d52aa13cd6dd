"""The monthly spend cap of a carrier, checked before each subscription charge (the opt-in and each renewal).

What one number was charged on the carrier this calendar month (`payments.selectors.monthly_spend`: every app,
subscriptions and one-off payments alike, less refunds, with the payments under way) plus the charge must not
exceed the carrier's `monthly_spend_cap_minor`. An opt-in above it is refused (`SpendingCapReached`); a renewal
above it is not sent to the carrier and fails as `spending_limit` (`services.renewals`).
"""

from datetime import datetime

from carriers.models import Carrier
from payments.selectors import monthly_spend


def within_spend_cap(*, msisdn: str, carrier: Carrier, amount_minor: int, currency: str, now: datetime) -> bool:
    cap = carrier.monthly_spend_cap_minor
    if cap is None:
        return True
    return monthly_spend(msisdn=msisdn, carrier=carrier, currency=currency, now=now) + amount_minor <= cap
