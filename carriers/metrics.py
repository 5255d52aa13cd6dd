"""The carriers' scrape-time metrics: each active carrier's queue and circuit-breaker state."""

from collections.abc import Iterable

from carriers.adapters import carrier_queue
from carriers.gateway import Breaker
from carriers.models import Carrier
from playpay import metrics

BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}


def _active_carriers() -> list[Carrier]:
    return list(Carrier.objects.filter(is_active=True).order_by("slug"))


def carrier_queues() -> list[str]:
    return [carrier_queue(carrier) for carrier in _active_carriers()]


def breaker_states() -> Iterable[tuple[dict[str, str], float]]:
    """The state shared by every worker (it lives in the cache), read as a number per carrier."""
    return [({"carrier": carrier.slug}, BREAKER_STATES[Breaker(carrier).state()]) for carrier in _active_carriers()]


def register() -> None:
    metrics.register_queues(carrier_queues)
    metrics.register_gauge(
        "playpay_carrier_breaker_state",
        "Circuit breaker state per active carrier: 0 closed, 1 half-open (one trial call), 2 open.",
        breaker_states,
        labels=["carrier"],
    )
