"""A channel of domain events: who publishes one knows nothing of who listens (`payments.events`,
`subscriptions.events`)."""

from collections.abc import Callable
from typing import Generic, TypeVar

E = TypeVar("E")


class Channel(Generic[E]):
    """Subscribers of one kind of event, called in order of subscription inside the publisher's transaction.
    Subscribers are independent of one another: none may rely on another having run first."""

    def __init__(self) -> None:
        self._subscribers: list[Callable[[E], None]] = []

    def subscribe(self, subscriber: Callable[[E], None]) -> None:
        """Call `subscriber` with every event, inside the transaction that publishes it."""
        if subscriber not in self._subscribers:
            self._subscribers.append(subscriber)

    def publish(self, event: E) -> None:
        for subscriber in self._subscribers:
            subscriber(event)
