"""Journal records live in the journal's own database; everything else of the app (staff actions) in default."""

from typing import Any

JOURNAL_MODELS = {"journalrecord"}


def _is_journal(model: Any) -> bool:
    return bool(model._meta.app_label == "journal" and model._meta.model_name in JOURNAL_MODELS)


class JournalRouter:
    def db_for_read(self, model: Any, **hints: Any) -> str | None:
        # Other reads are the next router's (playpay.replica: a report's go to the replica), else default's.
        return "journal" if _is_journal(model) else None

    def db_for_write(self, model: Any, **hints: Any) -> str | None:
        return "journal" if _is_journal(model) else "default"

    def allow_relation(self, obj1: Any, obj2: Any, **hints: Any) -> bool | None:
        return None

    def allow_migrate(self, db: str, app_label: str, model_name: str | None = None, **hints: Any) -> bool | None:
        if app_label == "journal" and model_name in JOURNAL_MODELS:
            return db == "journal"
        if app_label == "journal" and hints.get("journal_only"):
            return db == "journal"
        return db == "default"
