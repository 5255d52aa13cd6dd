"""Prometheus metrics: the counters and histograms the code updates, and gauges computed at scrape time.

With PROMETHEUS_MULTIPROC_DIR set (gunicorn with several workers, Celery's prefork children) every
process writes its values to files in that directory and a scrape adds them up (prometheus-client's
multiprocess mode); without it (the embedded default) they live in the process. What each metric
means, and how to scrape it: docs/operations.md, "Metrics".

Scrape-time gauges (queue depths, outbox lag, journal spool depth, breaker states) are read when
Prometheus asks, with bounded cost. This package is the bottom layer, so the apps that own the data
register their readers here from their AppConfig.ready(): `register_gauge` and `register_queues`.
"""

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cache

import redis
from django.conf import settings
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from playpay.celery import app as celery_app

logger = logging.getLogger(__name__)

HTTP_REQUESTS = Counter(
    "playpay_http_requests_total",
    "HTTP requests answered, by method, route pattern and status code.",
    ["method", "route", "status"],
)
HTTP_REQUEST_SECONDS = Histogram(
    "playpay_http_request_duration_seconds",
    "Time to answer an HTTP request, by method and route pattern.",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
PAYMENT_TRANSITIONS = Counter(
    "playpay_payment_transitions_total",
    "Payments entering a status, by the status entered and the carrier.",
    ["status", "carrier"],
)
CARRIER_CALLS = Counter(
    "playpay_carrier_calls_total",
    "Calls made to a carrier, by carrier, operation and result "
    "(succeeded, declined, unknown: sent but no answer, unreachable: not sent).",
    ["carrier", "operation", "result"],
)
CARRIER_CALL_SECONDS = Histogram(
    "playpay_carrier_call_duration_seconds",
    "Duration of a call to a carrier, by carrier and operation.",
    ["carrier", "operation"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30),
)
CARRIER_CALL_ERRORS = Counter(
    "playpay_carrier_call_errors_total",
    "Carrier calls that failed in transport, by carrier, operation and kind "
    "(unknown: timeout or broken reply after sending; unreachable: not sent; exception: an adapter error).",
    ["carrier", "operation", "kind"],
)
CARRIER_CALLS_DEFERRED = Counter(
    "playpay_carrier_calls_deferred_total",
    "Carrier calls not made and left to a retry, by carrier and reason (breaker_open, rate_limit).",
    ["carrier", "reason"],
)

# Scrape-time readers the owning apps register.
GaugeReader = Callable[[], float | Iterable[tuple[dict[str, str], float]]]


@dataclass(frozen=True)
class _Gauge:
    name: str
    documentation: str
    labels: tuple[str, ...]
    read: GaugeReader


_gauges: dict[str, _Gauge] = {}
_queue_sources: list[Callable[[], Iterable[str]]] = []

QUEUE_DEPTH_TIMEOUT_SECONDS = 0.5


def register_gauge(name: str, documentation: str, read: GaugeReader, *, labels: Iterable[str] = ()) -> None:
    """A gauge read at each scrape: `read()` returns a value, or (labels, value) pairs for labelled gauges."""
    _gauges[name] = _Gauge(name, documentation, tuple(labels), read)


def register_queues(source: Callable[[], Iterable[str]]) -> None:
    """Celery queues whose depth to report (besides the default queue), listed at each scrape."""
    _queue_sources.append(source)


def queue_names() -> list[str]:
    names = {settings.CELERY_TASK_DEFAULT_QUEUE}
    for source in _queue_sources:
        names.update(source())
    return sorted(names)


@cache
def _broker(url: str) -> redis.Redis:
    return redis.Redis.from_url(
        url, socket_timeout=QUEUE_DEPTH_TIMEOUT_SECONDS, socket_connect_timeout=QUEUE_DEPTH_TIMEOUT_SECONDS
    )


def queue_depths() -> dict[str, int]:
    """Messages waiting in each queue (Redis LLEN); nothing when tasks run in-process or the broker is not Redis.

    Tasks with a countdown wait in the broker's unacked set, not in the queue, until they are due.
    """
    url = settings.CELERY_BROKER_URL
    if celery_app.conf.task_always_eager or not url.startswith(("redis://", "rediss://")):
        return {}
    names = queue_names()
    # Celery's Redis transport keeps every key under the broker's optional global_keyprefix.
    prefix = (celery_app.conf.broker_transport_options or {}).get("global_keyprefix", "")
    pipeline = _broker(url).pipeline(transaction=False)
    for name in names:
        pipeline.llen(prefix + name)
    return {name: int(depth) for name, depth in zip(names, pipeline.execute(), strict=True)}


class ScrapeTimeCollector(Collector):
    """The gauges computed when Prometheus scrapes; one that cannot be read is left out (and logged)."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            depths = queue_depths()
        except (redis.RedisError, OSError) as exc:
            logger.warning("metrics: queue depths unavailable: %s", exc)
        else:
            if depths:
                family = GaugeMetricFamily(
                    "playpay_celery_queue_depth",
                    "Messages waiting in a Celery queue (ready, not yet taken).",
                    labels=["queue"],
                )
                for name, depth in depths.items():
                    family.add_metric([name], depth)
                yield family
        for gauge in list(_gauges.values()):
            try:
                value = gauge.read()
            except Exception:
                logger.exception("metrics: %s could not be read", gauge.name)
                continue
            family = GaugeMetricFamily(gauge.name, gauge.documentation, labels=list(gauge.labels) or None)
            if isinstance(value, int | float):
                family.add_metric([], float(value))
            else:
                for labels, sample in value:
                    family.add_metric([labels[name] for name in gauge.labels], sample)
            yield family


def multiprocess_dir() -> str:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")


def process_registry() -> CollectorRegistry:
    """What this process's code has counted: every process's, in multiprocess mode."""
    if not multiprocess_dir():
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


def exposition() -> tuple[bytes, str]:
    """The text exposition of every metric (the counted ones, then the scrape-time gauges), and its type."""
    scraped = CollectorRegistry(auto_describe=False)
    scraped.register(ScrapeTimeCollector())
    return generate_latest(process_registry()) + generate_latest(scraped), CONTENT_TYPE_LATEST


def mark_process_dead(pid: int) -> None:
    """A finished worker's live gauges go (gunicorn's child_exit, Celery's worker_process_shutdown)."""
    if multiprocess_dir():
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def serve_process_metrics(*, port: int, addr: str) -> None:
    """Serve this process group's metrics (a Celery worker's) on a port of its own, in a thread.

    No token here: bind it to an address only the scraper reaches (the default is the loopback).
    """
    start_http_server(port, addr=addr, registry=process_registry())
