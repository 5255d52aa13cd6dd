from django.apps import AppConfig


class PaymentsConfig(AppConfig):
    name = "payments"
    verbose_name = "Payments"

    def ready(self) -> None:
        # Register the tasks at start-up: the outbox looks them up by name.
        from payments import tasks  # noqa: F401
        from payments.metrics import register as register_metrics

        register_metrics()
