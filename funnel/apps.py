from django.apps import AppConfig


class FunnelConfig(AppConfig):
    name = "funnel"
    verbose_name = "Funnel"

    def ready(self) -> None:
        from funnel import partitions, tasks  # noqa: F401  (partitions: registers the events table)
        from funnel.metrics import register as register_metrics
        from funnel.services import record_payment_step, record_subscription_step
        from payments import events
        from subscriptions import events as subscription_events

        # Payments and subscriptions do not know about analytics: the funnel listens to their status changes.
        events.subscribe(record_payment_step)
        subscription_events.subscribe(record_subscription_step)
        register_metrics()
