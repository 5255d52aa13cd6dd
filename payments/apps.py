from django.apps import AppConfig


class PaymentsConfig(AppConfig):
    name = "payments"
    verbose_name = "Payments"

    def ready(self) -> None:
        # Register the tasks at start-up: the outbox looks them up by name.
        from payments import events, metrics, partitions, tasks  # noqa: F401  (partitions: registers tables)
        from payments.services import ledger, webhooks

        # What a payment's status change causes, in its transaction (payments.events).
        events.subscribe(ledger.on_status_changed)
        events.subscribe(webhooks.on_status_changed)
        events.subscribe(metrics.count_transition)
        metrics.register()
