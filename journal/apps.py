from django.apps import AppConfig


class JournalConfig(AppConfig):
    name = "journal"
    verbose_name = "Interaction journal"

    def ready(self) -> None:
        from journal import partitions, tasks  # noqa: F401  (partitions: registers the records table)
        from journal.metrics import register as register_metrics

        register_metrics()
