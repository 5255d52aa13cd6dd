"""Per-app request rate limit: a fixed one-minute window counted in the cache."""

import time
from typing import Any

from django.core.cache import cache, caches
from django.core.cache.backends.redis import RedisCache
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from tenants.auth import request_app

WINDOW_SECONDS = 60


def _redis_client(backend: RedisCache) -> Any:
    """One client per cache backend and process (Django makes a new one, costly, on each call)."""
    client = getattr(backend, "_playpay_client", None)
    if client is None:
        client = backend._playpay_client = backend._cache.get_client(write=True)  # type: ignore[attr-defined]
    return client


def count_request(key: str, *, ttl: int) -> int:
    """Increment a counter that expires `ttl` s after its first increment; one round trip on Redis."""
    backend = caches["default"]
    if isinstance(backend, RedisCache):
        client = _redis_client(backend)
        full_key = backend.make_and_validate_key(key)
        with client.pipeline(transaction=False) as pipe:
            pipe.incr(full_key)
            pipe.expire(full_key, ttl, nx=True)
            count, _ = pipe.execute()
        return int(count)
    if cache.add(key, 1, timeout=ttl):
        return 1
    try:
        return int(cache.incr(key))
    except ValueError:  # expired between add and incr
        cache.add(key, 1, timeout=ttl)
        return 1


class AppRateThrottle(BaseThrottle):
    """`429 Too Many Requests` with `Retry-After` once an app passes its requests per minute."""

    def allow_request(self, request: Request, view: Any) -> bool:
        app = request_app(request)
        if app is None:
            return True
        now = time.time()
        window = int(now // WINDOW_SECONDS)
        count = count_request(f"throttle:app:{app.pk}:{window}", ttl=WINDOW_SECONDS + 5)
        self._wait = (window + 1) * WINDOW_SECONDS - now
        return count <= app.effective_rate_limit

    def wait(self) -> float | None:
        return getattr(self, "_wait", None)
