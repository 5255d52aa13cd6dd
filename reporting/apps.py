from django.apps import AppConfig


class ReportingConfig(AppConfig):
    name = "reporting"
    verbose_name = "Reporting"

    def ready(self) -> None:
        # Register the tasks at start-up: the outbox looks them up by name.
        from reporting import tasks  # noqa: F401
