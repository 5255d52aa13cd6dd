"""The funnel's scrape-time metric: how far the analytics tier (ClickHouse) lags behind."""

from funnel.analytics.shipping import lag_seconds
from playpay import metrics


def register() -> None:
    metrics.register_gauge(
        "playpay_analytics_lag_seconds",
        "Per source table, how long ago the rows still missing from ClickHouse may have been written "
        "(every older row is shipped); it grows when shipping fails.",
        lag_seconds,
        labels=["source"],
    )
