from django.apps import AppConfig


class CarriersConfig(AppConfig):
    name = "carriers"
    verbose_name = "Carriers"

    def ready(self) -> None:
        from carriers.metrics import register as register_metrics

        register_metrics()
