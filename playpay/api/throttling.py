"""Per-app request rate limit: a fixed one-minute window counted in the cache."""

import time
from typing import Any

from django.core.cache import cache
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from playpay.api.auth import request_app

WINDOW_SECONDS = 60


class AppRateThrottle(BaseThrottle):
    """`429 Too Many Requests` with `Retry-After` once an app passes its requests per minute."""

    def allow_request(self, request: Request, view: Any) -> bool:
        app = request_app(request)
        if app is None:
            return True
        now = time.time()
        window = int(now // WINDOW_SECONDS)
        key = f"throttle:app:{app.pk}:{window}"
        if cache.add(key, 1, timeout=WINDOW_SECONDS + 5):
            count = 1
        else:
            try:
                count = cache.incr(key)
            except ValueError:  # expired between add and incr
                cache.add(key, 1, timeout=WINDOW_SECONDS + 5)
                count = 1
        self._wait = (window + 1) * WINDOW_SECONDS - now
        return count <= app.effective_rate_limit

    def wait(self) -> float | None:
        return getattr(self, "_wait", None)
