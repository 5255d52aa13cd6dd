"""Domain events a payment publishes, and the one place their subscribers are called.

A state change publishes a small typed event inside its transaction. Subscribers
run in that same transaction, so what they write (ledger lines, funnel steps, a
webhook delivery and its outbox message) commits or rolls back with the change;
work that must not run inside it goes through the outbox and runs after the
commit. Payments knows nothing of who listens: each app subscribes from its
`AppConfig.ready()`. Subscribers are independent of one another: none may rely on
another having run first (their order follows INSTALLED_APPS).
"""

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from playpay.events import Channel

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


_channel: Channel[PaymentStatusChanged] = Channel()
# Each app subscribes from its `AppConfig.ready()`; the state changes publish.
subscribe = _channel.subscribe
publish = _channel.publish
