"""Domain events a payment publishes, and the one place their subscribers are called.

A state change publishes a small typed event inside its transaction. Subscribers
run in that same transaction, so what they write (ledger lines, funnel steps, a
webhook delivery and its outbox message) commits or rolls back with the change;
work that must not run inside it goes through the outbox and runs after the
commit. Payments knows nothing of who listens: each app subscribes from its
`AppConfig.ready()`. Subscribers are independent of one another: none may rely on
another having run first (their order follows INSTALLED_APPS).
"""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from payments.models import Payment


@dataclass(frozen=True)
class PaymentStatusChanged:
    """A payment moved from `from_status` (empty at its creation) to `to_status`."""

    payment: "Payment"
    from_status: str
    to_status: str
    actor: str
    occurred_at: datetime


Subscriber = Callable[[PaymentStatusChanged], None]

_subscribers: list[Subscriber] = []


def subscribe(subscriber: Subscriber) -> None:
    """Call `subscriber` with every status change, inside the transaction that makes it."""
    if subscriber not in _subscribers:
        _subscribers.append(subscriber)


def publish(event: PaymentStatusChanged) -> None:
    for subscriber in _subscribers:
        subscriber(event)
