"""Process-local memo of small, hot, rarely changing reads: carrier routing, price points, API keys.

Every payment request needs the same handful of reference rows; reading them from
the database each time costs more than creating the payment. A `RefCache` keeps
them in the process for at most `REFERENCE_CACHE_SECONDS` (0 turns caching off).

Staleness is bounded, not zero: a save or delete of a watched model clears the
caches of the process that made it at once; other processes (web workers on this
or other machines) see the change within `REFERENCE_CACHE_SECONDS`. So a carrier
or price point switched off, or an API key revoked, stops working everywhere within
that many seconds (5 by default). Values are returned as shallow copies: a caller
cannot change a cached object's attributes, but the elements of a cached dict or list
are shared and must be copied by whoever hands them on.
"""

import copy
from collections.abc import Callable, Hashable
from time import monotonic
from typing import Any, Generic, TypeVar

from django.conf import settings
from django.db.models import Model
from django.db.models.signals import post_delete, post_save

T = TypeVar("T")

MAX_ENTRIES = 10_000
_registry: list["RefCache[Any]"] = []


class RefCache(Generic[T]):
    def __init__(self, name: str, *, watch: tuple[type[Model], ...]) -> None:
        self.name = name
        self._entries: dict[Hashable, tuple[float, T]] = {}
        _registry.append(self)
        for model in watch:
            post_save.connect(self._on_change, sender=model, weak=False)
            post_delete.connect(self._on_change, sender=model, weak=False)

    def get(self, key: Hashable, load: Callable[[], T | None]) -> T | None:
        """The cached value for `key`, or `load()` (stored unless it is None: misses are not cached)."""
        ttl = settings.REFERENCE_CACHE_SECONDS
        if ttl <= 0:
            return load()
        now = monotonic()
        entry = self._entries.get(key)
        if entry is not None and entry[0] > now:
            return copy.copy(entry[1])
        value = load()
        if value is not None:
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()
            self._entries[key] = (now + ttl, value)
            return copy.copy(value)
        return value

    def clear(self) -> None:
        self._entries.clear()

    def _on_change(self, **kwargs: Any) -> None:
        self.clear()


def clear_all() -> None:
    """Forget every cached value in this process (after a change the signals cannot see, and in tests)."""
    for cache in _registry:
        cache.clear()
