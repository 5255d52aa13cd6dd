from django.apps import AppConfig


class SubscriptionsConfig(AppConfig):
    name = "subscriptions"
    verbose_name = "Subscriptions"

    def ready(self) -> None:
        from carriers.adapters.base import NotificationKind
        from payments import events, notification_handlers
        from subscriptions import tasks  # noqa: F401  (registers the tasks the outbox and beat name)
        from subscriptions.services import carrier_managed, charges, stop

        # A charge of a subscription settles its period in the payment's own transaction.
        events.subscribe(charges.on_payment_status_changed)
        # A carrier that manages renewals tells of them on payments' callback endpoint.
        notification_handlers.register(NotificationKind.SUBSCRIPTION, carrier_managed.handle_notification)
        # A player's STOP by SMS, pushed by the carrier on the same endpoint (Parlay X's SMS notification).
        notification_handlers.register(NotificationKind.SMS, stop.handle_sms)
        # The admin's player page lists the player's subscriptions: subscriptions/admin.py registers it when the
        # admin loads (payments' extension point, payments/player_sections.py).
