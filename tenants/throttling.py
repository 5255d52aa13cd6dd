"""Per-app request rate limit: a fixed one-minute window counted in the cache."""

import time
from typing import Any

from django.core.cache import cache, caches
from django.core.cache.backends.redis import RedisCache
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from tenants.auth import request_app

WINDOW_SECONDS = 60


# INCR, and the window's expiry set by its first request: one command (a pipeline of two cost more Python).
COUNT_SCRIPT = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return count
"""


def _counter(backend: RedisCache) -> Any:
    """The counting script on one client per cache backend and process (Django makes a new client, costly,
    on each call); redis-py runs it by its hash, and loads it again where the server lost it."""
    script = getattr(backend, "_playpay_count_script", None)
    if script is None:
        client = backend._cache.get_client(write=True)
        script = client.register_script(COUNT_SCRIPT)
        setattr(backend, "_playpay_count_script", script)  # noqa: B010 (an attribute of our own on Django's)
    return script


def count_request(key: str, *, ttl: int) -> int:
    """Increment a counter that expires `ttl` s after its first increment; one round trip on Redis."""
    backend = caches["default"]
    if isinstance(backend, RedisCache):
        return int(_counter(backend)(keys=[backend.make_and_validate_key(key)], args=[ttl]))
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
