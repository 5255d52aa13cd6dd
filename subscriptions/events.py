"""Domain events a subscription publishes, and the one place their subscribers are called.

As `payments.events`: a status change publishes a small typed event inside its transaction, and each
subscriber (the funnel's steps of an opt-in) writes in that same transaction. Subscriptions knows nothing of
who listens: each app subscribes from its `AppConfig.ready()`.
"""

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from playpay.events import Channel

if TYPE_CHECKING:
    from subscriptions.models import Subscription


@dataclass(frozen=True)
class SubscriptionStatusChanged:
    """A subscription moved from `from_status` (empty at its creation) to `to_status`; `failure_code` is the
    standard error code of the charge that made it (an opt-in that failed), if any."""

    subscription: "Subscription"
    from_status: str
    to_status: str
    actor: str
    reason: str
    occurred_at: datetime
    failure_code: str = ""


_channel: Channel[SubscriptionStatusChanged] = Channel()
# Each app subscribes from its `AppConfig.ready()`; the state changes publish.
subscribe = _channel.subscribe
publish = _channel.publish
