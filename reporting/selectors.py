"""Reads for the dashboard: every figure comes from a catalog dataset through the one query interface."""

from collections import defaultdict
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any
from zoneinfo import ZoneInfo

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.utils import timezone

from carriers.models import Carrier
from funnel.models import FunnelDefinition
from playpay.money import UnknownCurrency, currency_exponent, format_money, to_major
from reporting.models import Dashboard, Dataset
from reporting.services import alerts, subscriber_counts
from reporting.services.datasets import DatasetQuery, DatasetQueryError, run_queries, run_query
from reporting.services.rollups import bucket_after, reporting_statement, truncate_to_bucket
from subscriptions.models import SubscriptionCharge
from subscriptions.services.state_machine import BILLED_STATUSES

# The datasets the dashboard reads (seeded by reporting 0004; editable, but keep these measures).
PAYMENTS, REFUNDS, REVERSALS = "payments", "refunds", "reversals"
CARRIER_CALLS, FUNNEL_ROLLUPS, FX_RATES = "carrier-calls", "funnel-rollups", "fx-rates"
# The subscriptions tile's (seeded by reporting 0017 and 0020); without them the tile says which is missing.
SUBSCRIPTIONS, SUBSCRIPTION_CHANGES = "subscriptions", "subscription-changes"
SUBSCRIPTION_CHARGES, SUBSCRIBER_DAYS = "subscription-charges", "subscriber-days"
SUBSCRIPTION_DATASETS = (SUBSCRIPTIONS, SUBSCRIPTION_CHANGES, SUBSCRIPTION_CHARGES, SUBSCRIBER_DAYS)
# Subscribers counted as "now": every subscription the renewal engine still bills.
SUBSCRIBED = tuple(str(status) for status in BILLED_STATUSES)

# period -> (length, time bucket of the charts)
PERIODS: dict[str, tuple[timedelta, str]] = {
    "24h": (timedelta(hours=24), "hour"),
    "7d": (timedelta(days=7), "day"),
    "30d": (timedelta(days=30), "day"),
    "90d": (timedelta(days=90), "week"),
    "12m": (timedelta(days=365), "month"),
    "18m": (timedelta(days=548), "month"),
}
DEFAULT_PERIOD = "24h"
TOP_ERRORS = 10


def visible_dashboards(user: AbstractBaseUser | AnonymousUser) -> list[Dashboard]:
    """Superusers see every dashboard; other staff those shared with one of their groups."""
    if not (user.is_active and getattr(user, "is_staff", False)):
        return []
    dashboards = Dashboard.objects.order_by("pk")
    if not getattr(user, "is_superuser", False):
        dashboards = dashboards.filter(groups__user=user.pk).distinct()
    return list(dashboards)


def can_view_dashboard(user: AbstractBaseUser | AnonymousUser, dashboard: Dashboard) -> bool:
    return dashboard in visible_dashboards(user)


@dataclass(frozen=True)
class DashboardFilters:
    period: str = DEFAULT_PERIOD
    app: str = ""
    country: str = ""
    carrier: str = ""
    timezone: str = "UTC"

    def dimensions(self) -> dict[str, tuple[str, ...]]:
        picked = {"app": self.app, "country": self.country, "carrier": self.carrier}
        return {name: (value,) for name, value in picked.items() if value}


@dataclass(frozen=True)
class FxRates:
    """Units of each currency per one unit of `base`, as of `rate_date`."""

    base: str
    rates: dict[str, Decimal]
    rate_date: str | None
    fetched_at: datetime | None
    error: str

    def convert(self, amount_minor: int, currency: str, target: str) -> int | None:
        """The amount in `target` minor units, or None without both rates."""
        if currency == target:
            return amount_minor
        if currency not in self.rates or target not in self.rates or not self.rates[currency]:
            return None
        major = to_major(amount_minor, currency)
        converted = major * self.rates[target] / self.rates[currency]
        return int(converted.scaleb(currency_exponent(target)).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def fx_rates(dataset: Dataset | None) -> FxRates:
    """The latest rate per currency from the FX dataset (None: not in the catalog)."""
    if dataset is None:
        return FxRates("", {}, None, None, f"no {FX_RATES!r} dataset in the catalog")
    result = run_query(dataset=dataset, query=DatasetQuery(measures=("rate",), group_by=("base", "quote", "date")))
    latest: dict[str, tuple[str, Decimal, str]] = {}
    for row in result.rows:
        if row["rate"] is None:
            continue
        quote, day = str(row["quote"]), str(row["date"])
        if quote not in latest or day > latest[quote][2]:
            latest[quote] = (str(row["base"]), Decimal(str(row["rate"])), day)
    bases = {base for base, _, _ in latest.values()}
    base = bases.pop() if len(bases) == 1 else ""
    rates = {quote: rate for quote, (_, rate, _) in latest.items()} if base else {}
    if base:
        rates[base] = Decimal(1)
    days = sorted({day for _, _, day in latest.values()})
    return FxRates(
        base,
        rates,
        days[0] if days else None,
        dataset.api_fetched_at,
        dataset.api_last_error or ("" if base else "no rates"),
    )


def _dashboard_datasets() -> dict[str, Dataset]:
    """The datasets the dashboard reads, with their fields, in one round trip each."""
    slugs = [PAYMENTS, REFUNDS, REVERSALS, CARRIER_CALLS, FUNNEL_ROLLUPS, FX_RATES, *SUBSCRIPTION_DATASETS]
    return {d.slug: d for d in Dataset.objects.prefetch_related("fields").filter(slug__in=slugs)}


def _dataset(catalog: dict[str, Dataset], slug: str) -> Dataset:
    dataset = catalog.get(slug)
    if dataset is None:
        raise DatasetQueryError(f"The dashboard reads the dataset {slug!r}, which is not in the catalog.")
    return dataset


def _money(amounts: dict[str, int], *, fx: FxRates, target: str) -> dict[str, Any]:
    """Per-currency amounts and their total in `target` (None when a rate is missing)."""
    total: int | None = 0
    missing = []
    for currency, amount in amounts.items():
        converted = fx.convert(amount, currency, target)
        if converted is None:
            missing.append(currency)
        elif total is not None:
            total += converted
    return {
        "total_minor": None if missing else total,
        "missing_rates": sorted(missing),
        "by_currency": [
            {"currency": currency, "amount_minor": amount, "exponent": _exponent(currency)}
            for currency, amount in sorted(amounts.items())
        ],
    }


def _exponent(currency: str) -> int | None:
    try:
        return currency_exponent(currency)
    except UnknownCurrency:
        return None


def _buckets(since: datetime, until: datetime, bucket: str, zone: ZoneInfo) -> list[str]:
    """Every bucket of the period, so that quiet hours show as zero instead of vanishing."""
    labels = []
    moment = truncate_to_bucket(since, bucket, zone)
    while moment < until:
        labels.append(moment.isoformat())
        moment = bucket_after(moment, bucket, zone)
    return labels


def dashboard_data(*, dashboard: Dashboard, filters: DashboardFilters, now: datetime | None = None) -> dict[str, Any]:
    """Everything the dashboard shows, as JSON-ready data, as of `now`."""
    now = now or timezone.now()
    with reporting_statement():  # one transaction, and its settings, for every tile
        return _dashboard_data(dashboard=dashboard, filters=filters, now=now)


def _dashboard_data(*, dashboard: Dashboard, filters: DashboardFilters, now: datetime) -> dict[str, Any]:
    window = _window(dashboard=dashboard, filters=filters, now=now)
    # The tiles' questions of the payments, answered by one read of the payment rollups.
    revenue, by_carrier, errors = window.rows_together(
        PAYMENTS,
        [
            window.query(("revenue_minor", "charged_payments"), bucketed=True),
            window.query(("success_rate", "payments"), group_by=("carrier",)),
            window.query(("failed_payments",), group_by=("failure_code",)),
        ],
    )
    revenue_tile = _revenue_tile(window, revenue)
    refunds = _refunds_tile(window)
    carriers = _carriers_tile(window, filters, by_carrier)
    return {
        "dashboard": dashboard.slug,
        "as_of": now.isoformat(),
        "period": {
            "name": filters.period,
            "since": window.since.isoformat(),
            "until": window.until.isoformat(),
            "bucket": window.bucket,
        },
        "timezone": filters.timezone,
        "filters": {"app": filters.app, "country": filters.country, "carrier": filters.carrier},
        "currency": window.currency,
        "fx": _fx_tile(window.fx),
        "revenue": revenue_tile,
        "funnel": _funnel_tile(window, dashboard),
        "carriers": carriers,
        "latency_ignores_app_filter": bool(filters.app),
        "refunds": refunds,
        "net_revenue": _net_revenue(window, revenue_tile, refunds),
        "errors": _errors_tile(errors),
        "subscriptions": _subscriptions_tile(window),
        "alerts": _alerts_tile(filters),
        "no_data": _no_data(filters, revenue_tile, refunds, carriers),
    }


@dataclass(frozen=True)
class _Window:
    """The period one dashboard answer covers, and how its tiles read their datasets."""

    catalog: dict[str, Dataset]
    since: datetime
    until: datetime
    bucket: str
    timezone: str
    dims: dict[str, tuple[str, ...]]
    labels: list[str]  # every bucket of the period
    currency: str  # the one totals are converted to
    fx: FxRates

    def query(
        self,
        measures: tuple[str, ...],
        *,
        group_by: tuple[str, ...] = (),
        filters: dict[str, tuple[str, ...]] | None = None,
        bucketed: bool = False,
        now: bool = False,
    ) -> DatasetQuery:
        """A query over the period (`now`: over every row, for what stands now), under the dashboard's filters
        unless `filters` replaces them."""
        return DatasetQuery(
            measures=measures,
            group_by=group_by,
            since=None if now else self.since,
            until=None if now else self.until,
            timezone=self.timezone,
            filters=self.dims if filters is None else filters,
            bucket=self.bucket if bucketed else None,
        )

    def rows(self, slug: str, measures: tuple[str, ...], **query: Any) -> list[dict[str, Any]]:
        """The dataset's rows over the period (`query` as in `query`)."""
        return run_query(dataset=_dataset(self.catalog, slug), query=self.query(measures, **query)).rows

    def rows_together(self, slug: str, queries: list[DatasetQuery]) -> list[list[dict[str, Any]]]:
        """The rows of several queries of one dataset, read together where the rollups allow."""
        return [result.rows for result in run_queries(dataset=_dataset(self.catalog, slug), queries=queries)]

    def money(self, amounts: dict[str, int]) -> dict[str, Any]:
        return _money(amounts, fx=self.fx, target=self.currency)


def _window(*, dashboard: Dashboard, filters: DashboardFilters, now: datetime) -> _Window:
    length, bucket = PERIODS[filters.period]
    since = now - length
    catalog = _dashboard_datasets()
    return _Window(
        catalog=catalog,
        since=since,
        until=now,
        bucket=bucket,
        timezone=filters.timezone,
        dims=filters.dimensions(),
        labels=_buckets(since, now, bucket, ZoneInfo(filters.timezone)),
        currency=dashboard.currency,
        fx=fx_rates(catalog.get(FX_RATES)),
    )


def _fx_tile(fx: FxRates) -> dict[str, Any]:
    return {
        "base": fx.base,
        "rate_date": fx.rate_date,
        "fetched_at": fx.fetched_at.isoformat() if fx.fetched_at else None,
        "error": fx.error,
    }


def _revenue_tile(window: _Window, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Revenue and payment count per bucket (charged payments, gross of later refunds)."""
    revenue_by_bucket: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    count_by_bucket: dict[str, int] = defaultdict(int)
    totals: dict[str, int] = defaultdict(int)
    for row in rows:
        key = row["bucket"].isoformat()
        revenue_by_bucket[key][row["currency"]] += row["revenue_minor"]
        count_by_bucket[key] += row["charged_payments"]
        totals[row["currency"]] += row["revenue_minor"]
    return {
        "bucket": window.bucket,
        "currency": window.currency,
        "exponent": currency_exponent(window.currency),
        "labels": window.labels,
        "amount_minor": [window.money(revenue_by_bucket[label])["total_minor"] for label in window.labels],
        "payments": [count_by_bucket[label] for label in window.labels],
        "total_payments": sum(count_by_bucket.values()),
        **window.money(dict(totals)),
    }


def _funnel_tile(window: _Window, dashboard: Dashboard) -> dict[str, Any]:
    """The dashboard's funnel (or the first one), from the hourly rollups."""
    definition = dashboard.funnel or FunnelDefinition.objects.order_by("pk").first()
    if definition is None:
        return {"name": None, "steps": []}
    steps = list(definition.steps)
    measures = tuple(f"step_{index + 1}" for index in range(len(steps)))
    rows = window.rows(FUNNEL_ROLLUPS, measures, filters={**window.dims, "funnel": (definition.name,)})
    reached = [int(rows[0][name] or 0) if rows else 0 for name in measures]
    return {
        "name": definition.name,
        "steps": [
            {
                "step": step,
                "reached": count,
                "conversion": (count / reached[0]) if reached[0] else None,
            }
            for step, count in zip(steps, reached, strict=True)
        ],
    }


def _carriers_tile(window: _Window, filters: DashboardFilters, payments: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Success rate per carrier (payments), latency and errors per carrier (journal of carrier calls)."""
    carriers: dict[str, dict[str, Any]] = defaultdict(dict)
    for row in payments:
        carriers[row["carrier"]].update(success_rate=row["success_rate"], payments=row["payments"])
    call_filters = _call_filters(filters)
    call_measures = ("calls", "avg_latency_ms", "max_latency_ms", "failed_calls")
    if call_filters is not None:
        for row in window.rows(CARRIER_CALLS, call_measures, group_by=("carrier",), filters=call_filters):
            carriers[row["carrier"]].update({measure: row[measure] for measure in call_measures})
    return [
        {
            "carrier": slug,
            "payments": values.get("payments", 0),
            "success_rate": values.get("success_rate"),
            "calls": values.get("calls", 0),
            "avg_latency_ms": values.get("avg_latency_ms"),
            "max_latency_ms": values.get("max_latency_ms"),
            "failed_calls": values.get("failed_calls", 0),
        }
        for slug, values in sorted(carriers.items())
    ]


def _call_filters(filters: DashboardFilters) -> dict[str, tuple[str, ...]] | None:
    """Carrier calls know their carrier, not the app or country: a country becomes its carriers."""
    call_filters: dict[str, tuple[str, ...]] = {}
    if filters.carrier:
        call_filters["carrier"] = (filters.carrier,)
    if filters.country:
        in_country = tuple(Carrier.objects.filter(country_id=filters.country).values_list("slug", flat=True))
        if filters.carrier:
            in_country = tuple(slug for slug in in_country if slug == filters.carrier)
        if not in_country:
            return None
        call_filters["carrier"] = in_country
    return call_filters


def _refunds_tile(window: _Window) -> dict[str, Any]:
    """Refunds and reversals per bucket, and their amounts."""
    refund_counts, refund_amounts = _counts_and_amounts(window, REFUNDS, "refunds")
    reversal_counts, reversal_amounts = _counts_and_amounts(window, REVERSALS, "reversals")
    return {
        "labels": window.labels,
        "refunds": [refund_counts[label] for label in window.labels],
        "reversals": [reversal_counts[label] for label in window.labels],
        "total_refunds": sum(refund_counts.values()),
        "total_reversals": sum(reversal_counts.values()),
        "refunded": window.money(dict(refund_amounts)),
        "reversed": window.money(dict(reversal_amounts)),
    }


def _counts_and_amounts(window: _Window, slug: str, count: str) -> tuple[dict[str, int], dict[str, int]]:
    """The `count` measure per bucket, and `amount_minor` per currency, of one dataset."""
    counts: dict[str, int] = defaultdict(int)
    amounts: dict[str, int] = defaultdict(int)
    for row in window.rows(slug, (count, "amount_minor"), bucketed=True):
        counts[row["bucket"].isoformat()] += row[count]
        amounts[row["currency"]] += row["amount_minor"]
    return counts, amounts


def _errors_tile(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Top error codes of payments that were not charged."""
    return sorted(
        (
            {"code": row["failure_code"] or "(none)", "count": row["failed_payments"]}
            for row in rows
            if row["failed_payments"]
        ),
        key=lambda item: (-item["count"], item["code"]),
    )[:TOP_ERRORS]


TRIED_OUTCOMES = tuple(o.value for o in SubscriptionCharge.Outcome if o != SubscriptionCharge.Outcome.MISSED)
CHANGE_MEASURES = ("new_subscribers", "churned_subscribers", "cancelled_subscribers", "expired_subscribers")
RENEWAL_MEASURES = ("charges", "charged", "failed", "periods_decided", "periods_renewed")


def _subscriptions_tile(window: _Window) -> dict[str, Any]:
    """Subscribers now (by status), new and churned ones per bucket, recurring revenue per bucket, the renewal
    success rate per carrier and the average revenue per subscriber (ARPU) over the period."""
    missing = [slug for slug in SUBSCRIPTION_DATASETS if slug not in window.catalog]
    if missing:
        return {"error": f"The dashboard reads the dataset {missing[0]!r}, which is not in the catalog."}
    subscribers = dict.fromkeys(SUBSCRIBED, 0)
    standing = window.rows(
        SUBSCRIPTIONS, ("subscriptions",), group_by=("status",), filters={**window.dims, "status": SUBSCRIBED}, now=True
    )
    for row in standing:
        subscribers[row["status"]] = row["subscriptions"]
    changes: dict[str, dict[str, int]] = {name: defaultdict(int) for name in CHANGE_MEASURES}
    for row in window.rows(SUBSCRIPTION_CHANGES, CHANGE_MEASURES, bucketed=True):
        for name in CHANGE_MEASURES:
            changes[name][row["bucket"].isoformat()] += row[name]
    # The charges' two questions in one read (the live edges of the period are read once): revenue per bucket, and
    # the attempts per carrier, kind and outcome, of which the renewals tried (a missed period, the engine down,
    # was never tried, so it is no attempt).
    by_bucket, by_outcome = window.rows_together(
        SUBSCRIPTION_CHARGES,
        [
            window.query(("revenue_minor",), bucketed=True),
            window.query(
                RENEWAL_MEASURES,
                group_by=("carrier", "kind", "outcome"),
            ),
        ],
    )
    revenue_by_bucket: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for row in by_bucket:
        if row["revenue_minor"]:  # only charges that went through have any (a missed period has no currency)
            revenue_by_bucket[row["bucket"].isoformat()][row["currency"]] += row["revenue_minor"]
    renewals: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for row in by_outcome:
        if row["kind"] == SubscriptionCharge.Kind.RENEWAL and row["outcome"] in TRIED_OUTCOMES:
            for name in RENEWAL_MEASURES:
                renewals[row["carrier"]][name] += row[name]
    revenue = _recurring_revenue(window, revenue_by_bucket)
    return {
        "subscribers": {**subscribers, "total": sum(subscribers.values())},
        "bucket": window.bucket,
        "labels": window.labels,
        **{
            name: [changes[name][label] for label in window.labels]
            for name in ("new_subscribers", "churned_subscribers")
        },
        **{f"total_{name}": sum(changes[name].values()) for name in CHANGE_MEASURES},
        "revenue": revenue,
        "renewals": [_renewal_rates(carrier, renewals[carrier]) for carrier in sorted(renewals)],
        "arpu": _arpu(window, revenue["total_minor"], subscribed_now=sum(subscribers.values())),
    }


def _renewal_rates(carrier: str, counts: dict[str, int]) -> dict[str, Any]:
    decided_attempts = counts["charged"] + counts["failed"]
    return {
        "carrier": carrier,
        "attempts": counts["charges"],
        "charged": counts["charged"],
        "failed": counts["failed"],
        "attempt_success_rate": counts["charged"] / decided_attempts if decided_attempts else None,
        "periods_decided": counts["periods_decided"],
        "periods_renewed": counts["periods_renewed"],
        # A period renewed on its third attempt is renewed: the rate counts periods, not attempts.
        "success_rate": counts["periods_renewed"] / counts["periods_decided"] if counts["periods_decided"] else None,
    }


def _recurring_revenue(window: _Window, by_bucket: dict[str, dict[str, int]]) -> dict[str, Any]:
    totals: dict[str, int] = defaultdict(int)
    for amounts in by_bucket.values():
        for currency, amount in amounts.items():
            totals[currency] += amount
    return {
        "currency": window.currency,
        "exponent": currency_exponent(window.currency),
        "amount_minor": [window.money(by_bucket[label])["total_minor"] for label in window.labels],
        **window.money(dict(totals)),
    }


def _arpu(window: _Window, revenue_minor: int | None, *, subscribed_now: int) -> dict[str, Any]:
    """Recurring revenue of the period per subscriber: over the average subscriber base, the billed subscriptions
    at each midnight of the period that has its day count (`subscriber-days`) and now, in the dashboard's currency
    (`revenue_minor`: the period's, converted; rounded half to even to its minor unit; none without the rates or
    without subscribers)."""
    counted, counted_until = subscriber_counts.counted_days(window.since, window.until)
    query = replace(window.query(("subscribers",), filters={**window.dims, "status": SUBSCRIBED}), until=counted_until)
    days = run_query(dataset=_dataset(window.catalog, SUBSCRIBER_DAYS), query=query).rows if counted else []
    average = Decimal((days[0]["subscribers"] if days else 0) + subscribed_now) / (counted + 1)
    arpu_minor = None
    if revenue_minor is not None and average:
        arpu_minor = int((revenue_minor / average).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))
    return {
        "currency": window.currency,
        "exponent": currency_exponent(window.currency),
        "average_subscribers": float(round(average, 1)),
        "days_counted": counted,
        "amount_minor": arpu_minor,
        "amount": _money_text(arpu_minor, window.currency),
    }


def _money_text(amount_minor: int | None, currency: str) -> str | None:
    if amount_minor is None:
        return None
    try:
        return format_money(amount_minor, currency)
    except UnknownCurrency:
        return f"{amount_minor} {currency} (minor units)"


def _alerts_tile(filters: DashboardFilters) -> dict[str, Any]:
    """Open and recent alerts; with a carrier chosen, only those that may concern it."""
    return {
        "open": [alerts.describe(event) for event in alerts.open_alerts(carrier=filters.carrier)],
        "recent": [alerts.describe(event) for event in alerts.recent_alert_events(carrier=filters.carrier)],
    }


def _net_revenue(window: _Window, revenue: dict[str, Any], refunds: dict[str, Any]) -> dict[str, Any]:
    """Revenue less the refunds and reversals paid back in the period, per currency and converted."""
    net: dict[str, int] = defaultdict(int)
    for tile, sign in ((revenue, 1), (refunds["refunded"], -1), (refunds["reversed"], -1)):
        for amount in tile["by_currency"]:
            net[amount["currency"]] += sign * amount["amount_minor"]
    return window.money(dict(net))


def _contradiction(filters: DashboardFilters) -> str:
    """Why the filters cannot match anything, in a sentence, or ""."""
    if filters.carrier and filters.country:
        country = Carrier.objects.filter(slug=filters.carrier).values_list("country_id", flat=True).first()
        if country is not None and country != filters.country:
            return f"The carrier {filters.carrier} is in {country}, not in {filters.country}."
    return ""


def _no_data(filters: DashboardFilters, revenue: dict[str, Any], refunds: dict[str, Any], carriers: list[Any]) -> str:
    """What the page says instead of empty charts, or "" when there is something to show."""
    if reason := _contradiction(filters):
        return f"No data: these filters cannot match anything. {reason}"
    if not (revenue["total_payments"] or refunds["total_refunds"] or refunds["total_reversals"] or carriers):
        return "No data for this period and these filters."
    return ""


def dashboard_choices() -> dict[str, list[tuple[str, str]]]:
    """What the filter form offers: apps, and the configured carriers and their countries."""
    from tenants.models import App

    carriers = Carrier.objects.configured().select_related("country").order_by("slug")
    countries = sorted({(c.country_id, c.country.name) for c in carriers})
    return {
        "period": [(name, name) for name in PERIODS],
        "app": [(app.name, app.name) for app in App.objects.order_by("name")],
        "country": countries,
        "carrier": [(c.slug, c.name) for c in carriers],
    }
