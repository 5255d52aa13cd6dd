"""Structured logs: JSON lines (or plain text) carrying the request, app, task and payment they belong to.

Context lives in a context variable, so it follows the request or task through every call without
being passed around:

- the request middleware (`playpay.middleware.RequestContextMiddleware`) opens a scope per request
  with its `request_id`; API authentication adds the `app`; a payment's URL adds its `payment_id`
  (a carrier's callback URL its `carrier`);
- every Celery task runs in a scope with its `task_id` and `task_name` (`playpay.celery`);
- code that learns more calls `bind(payment_id=...)`: the field stays until the scope ends;
  `with bound(payment_id=...):` adds it only inside the block.

Any `extra={...}` of a log call appears in the JSON line beside the context. Before a line is
written, the configured redactor (`playpay.redaction.redact`, named in settings.LOGGING) removes
secret-keyed values and masks phone numbers, as in the journal.
"""

import logging
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from django.utils.module_loading import import_string
from pythonjsonlogger.json import JsonFormatter as _LibraryJsonFormatter

# One mutable dict per scope: `bind` adds to the innermost scope; leaving a scope restores the outer one.
_context: ContextVar[dict[str, Any] | None] = ContextVar("playpay_log_context", default=None)

# Values that are identifiers: never phone numbers (a UUID's digit-only group would look like one).
_ID_KEY = re.compile(r"(^|_)id$")
_STANDARD = ("timestamp", "level", "logger", "message")


def bind(**fields: Any) -> None:
    """Add fields to the current scope's log context (a request or task); they last until it ends."""
    current = _context.get()
    if current is None:
        _context.set({key: value for key, value in fields.items() if value not in (None, "")})
        return
    current.update({key: value for key, value in fields.items() if value not in (None, "")})


@contextmanager
def bound(**fields: Any) -> Iterator[None]:
    """A scope whose log lines carry `fields` besides the outer context; `bind` inside stays inside."""
    outer = _context.get() or {}
    token = _context.set({**outer, **{key: value for key, value in fields.items() if value not in (None, "")}})
    try:
        yield
    finally:
        _context.reset(token)


def open_scope(**fields: Any) -> None:
    """A fresh context for work that does not end with a block: a request, until `close_scope`.

    The request's scope lasts until its response is closed, so that Django's own line about the
    response (`django.request`, written after the middleware) still carries the request id.
    """
    _context.set({key: value for key, value in fields.items() if value not in (None, "")})


def close_scope() -> None:
    _context.set(None)


def current_context() -> dict[str, Any]:
    return dict(_context.get() or {})


def _no_redaction(value: Any) -> Any:
    return value


class _Redacting:
    """Resolves the redactor named in settings at the first line (its module may need settings)."""

    def __init__(self, redact: str = "") -> None:
        self._redact_path = redact
        self._redact: Callable[[Any], Any] | None = None

    def redact(self, value: Any) -> Any:
        if self._redact is None:
            self._redact = import_string(self._redact_path) if self._redact_path else _no_redaction
        return self._redact(value)

    def redact_fields(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Fields with secrets removed and numbers masked; identifier fields are kept as they are."""
        ids = {key: value for key, value in fields.items() if _ID_KEY.search(key)}
        rest = {key: value for key, value in fields.items() if key not in ids}
        redacted = self.redact(rest)
        if not isinstance(redacted, dict):
            return fields
        return {key: ids[key] if key in ids else redacted[key] for key in fields}


class JsonFormatter(_Redacting, _LibraryJsonFormatter):
    """One JSON object per line: timestamp, level, logger, message, the bound context and the extras."""

    def __init__(self, *args: Any, redact: str = "", **kwargs: Any) -> None:
        _Redacting.__init__(self, redact)
        _LibraryJsonFormatter.__init__(self, *args, **kwargs)

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
        log_data["timestamp"] = datetime.fromtimestamp(record.created, tz=UTC).isoformat()
        log_data["level"] = record.levelname
        log_data["logger"] = record.name
        log_data["message"] = record.getMessage()
        log_data.update(current_context())
        # Explicit extras win over the context: the line is about what its caller says it is about.
        super().add_fields(log_data, record, message_dict)

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        standard = {key: log_data.pop(key) for key in _STANDARD if key in log_data}
        message = standard.pop("message", "")
        free = self.redact_fields({"message": message, **log_data})
        return {**standard, **free}


class TextFormatter(_Redacting, logging.Formatter):
    """Plain lines for development: `time level logger message [key=value …]` with context and extras."""

    _RECORD_FIELDS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}

    def __init__(self, *args: Any, redact: str = "", **kwargs: Any) -> None:
        _Redacting.__init__(self, redact)
        logging.Formatter.__init__(self, *args, **kwargs)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = {key: value for key, value in record.__dict__.items() if key not in self._RECORD_FIELDS}
        fields = self.redact_fields({**current_context(), **extras})
        if fields:
            line += " [" + " ".join(f"{key}={value}" for key, value in fields.items()) + "]"
        masked = self.redact(line)
        return masked if isinstance(masked, str) else line


def logging_config(*, log_format: str, level: str, redact: str) -> dict[str, Any]:
    """The LOGGING setting: every line through one handler, as JSON or plain text."""
    formatters: dict[str, dict[str, Any]] = {
        "json": {"()": "playpay.logging.JsonFormatter", "redact": redact},
        "text": {
            "()": "playpay.logging.TextFormatter",
            "format": "%(asctime)s %(levelname)s %(name)s %(message)s",
            "redact": redact,
        },
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": formatters,
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": log_format}},
        "root": {"handlers": ["console"], "level": level},
    }
