"""Where a carrier callback that is about something above payments goes, without payments knowing it.

A subscription event of a carrier that manages renewals (`NotificationKind.SUBSCRIPTION`), or an SMS a
player sent to the service's number (`NotificationKind.SMS`: STOP), arrives on the carriers' one callback
endpoint; the app that owns subscriptions registers its handlers here as it loads.
The handler runs inside the transaction that recorded the callback's id (a duplicate never reaches it) and
answers what it did, for the callback's record.
"""

from collections.abc import Callable

from carriers.adapters.base import Notification, NotificationKind
from carriers.models import Carrier

NotificationHandler = Callable[[Carrier, Notification], str]
_handlers: dict[str, NotificationHandler] = {}


def register(kind: NotificationKind, handler: NotificationHandler) -> None:
    _handlers[kind] = handler


def handle(carrier: Carrier, notification: Notification) -> str:
    handler = _handlers.get(notification.kind)
    if handler is None:
        return f"ignored: nothing handles {notification.kind} notifications"
    return handler(carrier, notification)
