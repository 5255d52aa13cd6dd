"""Demo data for the embedded default: carriers on every protocol (against the simulators), a demo app and
its subscription plan (on every demo carrier that takes subscriptions, the aggregator's included), and the
reporting catalog's API datasets (FX rates, the aggregator's balance) against the reference-data simulators."""

from dataclasses import dataclass, field

from django.conf import settings

from carriers.adapters import adapter_class
from carriers.models import Carrier, NumberPrefix, PricePoint, Protocol
from funnel.models import FunnelDefinition
from reporting.models import Dashboard, Dataset, DatasetField, SourceKind
from subscriptions.models import PLATFORM_MANAGED, Plan, PlanOffer
from subscriptions.periods import Period
from tenants.models import App
from tenants.services import issue_api_key, revoke_api_keys

DEMO_APP = "Demo Game"
# The store journey the demo traffic plays, joined with the platform's own steps; the overview dashboard shows it.
DEMO_FUNNEL = "Demo store purchase"
DEMO_FUNNEL_STEPS = ["store_opened", "item_selected", "msisdn_entered", "payment_created", "charge_succeeded"]
DEMO_TRAFFIC_KEY_LABEL = "demo_traffic"
# The demo app's subscription plan: daily, so that its second period is charged a day later: by the renewal
# engine, or on the aggregator's carrier by the aggregator's own schedule.
DEMO_PLAN = "vip-daily"
DEMO_PLAN_PRICE = ("vip-daily", 49)
# Its downgrade-billing price, on the demo carrier that takes downgrade billing: a renewal declined there for
# insufficient funds is tried again at it.
DEMO_PLAN_FALLBACK_PRICE = ("vip-daily-lite", 29)


def takes_subscriptions(protocol: str) -> bool:
    """Whether a carrier of this protocol takes subscriptions: PlayPay charges its renewals, or the protocol's
    carrier schedules them itself (its adapter says so)."""
    return protocol in PLATFORM_MANAGED or adapter_class(protocol).capabilities.managed_subscriptions


@dataclass(frozen=True)
class DemoCarrier:
    slug: str
    name: str
    country: str
    currency: str
    protocol: str
    prefixes: list[str]
    one_click: bool
    prices: list[tuple[str, int]]
    credentials: dict[str, str] = field(default_factory=dict)
    downgrade_billing: bool = False

    @property
    def subscriptions(self) -> bool:
        """Whether the demo carrier takes subscriptions: PIN and one-click, renewals charged by PlayPay or, on the
        aggregator's, by the aggregator (its simulator's periodic job)."""
        return self.one_click and takes_subscriptions(self.protocol)

    @property
    def plan_prices(self) -> list[tuple[str, int]]:
        """The demo plan's price points on it: its regular price, and its fallback price where it downgrades."""
        if not self.subscriptions:
            return []
        return [DEMO_PLAN_PRICE, *([DEMO_PLAN_FALLBACK_PRICE] if self.downgrade_billing else [])]

    @property
    def endpoint(self) -> str:
        if self.protocol == Protocol.SANDBOX:
            return ""
        return f"{settings.PUBLIC_BASE_URL}/simulators/{self.protocol}"


GEMS_GBP = [("gems-100", 99), ("gems-500", 499), ("gems-1200", 999)]
# Sandbox carriers answer in-process; the others speak their protocol to its simulator over HTTP
# (the simulators' published test credentials).
DEMO_CARRIERS = [
    DemoCarrier("sandbox-gb-alpha", "Sandbox Alpha UK", "GB", "GBP", Protocol.SANDBOX, ["4474"], False, GEMS_GBP),
    DemoCarrier(
        "sandbox-gb-beta",
        "Sandbox Beta UK",
        "GB",
        "GBP",
        Protocol.SANDBOX,
        ["4475"],
        True,
        GEMS_GBP,
        downgrade_billing=True,
    ),
    DemoCarrier(
        "camara-gb",
        "CAMARA Telco UK (simulated)",
        "GB",
        "GBP",
        Protocol.CAMARA,
        ["4477"],
        True,
        GEMS_GBP,
        {"client_id": "playpay", "client_secret": "camara-secret", "notification_token": "demo-sink-token"},
    ),
    DemoCarrier(
        "aggregator-gb",
        "DCB Aggregator UK (simulated)",
        "GB",
        "GBP",
        Protocol.AGGREGATOR,
        ["4478"],
        True,
        GEMS_GBP,
        {
            "merchant_id": "playpay-demo",
            "api_secret": "aggregator-api-secret",
            "callback_secret": "aggregator-callback-secret",
        },
    ),
    DemoCarrier(
        "parlayx-es",
        "Parlay X Operador (simulated)",
        "ES",
        "EUR",
        Protocol.PARLAYX,
        [],
        True,
        [("gems-100", 99), ("gems-500", 499)],
        {"sp_id": "000201", "sp_password": "parlayx-secret", "sender_name": "PlayPay"},
    ),
]


D, M = DatasetField.Role.DIMENSION, DatasetField.Role.MEASURE


@dataclass(frozen=True)
class DemoDataset:
    slug: str
    name: str
    description: str
    url_path: str
    rows_path: str
    time_field: str
    refresh_minutes: int
    # (name, role, source, data type, aggregation, label)
    fields: list[tuple[str, str, str, str, str, str]]


# The API datasets reporting reads by slug (`fx-rates` converts the dashboard's multi-currency totals),
# served here by the reference-data simulators (`sandbox.simulators.reference`).
DEMO_DATASETS = [
    DemoDataset(
        "fx-rates",
        "FX rates",
        "Daily reference rates: units of each currency per one unit of the base. Converts multi-currency totals.",
        "/simulators/fx/rates",
        "rates",
        "date",
        15,
        [
            ("date", D, "", "string", "", "rate date"),
            ("base", D, "", "string", "", "base"),
            ("quote", D, "", "string", "", "currency"),
            ("rate", M, "", "decimal", "avg", "rate"),
        ],
    ),
    DemoDataset(
        "aggregator-balance",
        "Aggregator balance",
        "What the DCB aggregator holds for us (its settlement balance API), per currency.",
        "/simulators/aggregator/v1/balance",
        "balances",
        "as_of",
        5,
        [
            ("currency", D, "", "string", "", "currency"),
            ("available_minor", M, "", "money", "sum", "available"),
        ],
    ),
]


def seed_demo_datasets() -> list[Dataset]:
    """The catalog's API datasets against this server's reference-data simulators (updated if they exist)."""
    seeded = []
    for demo in DEMO_DATASETS:
        dataset, _ = Dataset.objects.update_or_create(
            slug=demo.slug,
            defaults={
                "name": demo.name,
                "description": demo.description,
                "source_kind": SourceKind.API,
                "source": "",
                "time_field": demo.time_field,
                "api_url": f"{settings.PUBLIC_BASE_URL}{demo.url_path}",
                "api_rows_path": demo.rows_path,
                "api_timeout_seconds": 5,
                "api_refresh_minutes": demo.refresh_minutes,
            },
        )
        for name, role, source, data_type, aggregation, label in demo.fields:
            DatasetField.objects.update_or_create(
                dataset=dataset,
                name=name,
                defaults={
                    "role": role,
                    "source": source,
                    "data_type": data_type,
                    "aggregation": aggregation,
                    "label": label,
                },
            )
        seeded.append(dataset)
    return seeded


@dataclass(frozen=True)
class DemoData:
    app: App
    raw_key: str
    carrier_slugs: list[str]
    dataset_slugs: list[str]


def seed_demo_data() -> DemoData:
    for demo in DEMO_CARRIERS:
        carrier, _ = Carrier.objects.update_or_create(
            slug=demo.slug,
            defaults={
                "name": demo.name,
                "country_id": demo.country,
                "protocol": demo.protocol,
                "endpoint": demo.endpoint,
                "is_active": True,
                "supports_pin": True,
                "supports_one_click": demo.one_click,
                "supports_refund": demo.protocol != Protocol.SANDBOX,
                "supports_subscriptions": demo.subscriptions,
                "supports_downgrade_billing": demo.downgrade_billing and demo.subscriptions,
            },
        )
        carrier.credentials = demo.credentials
        carrier.save(update_fields=["credentials_encrypted"])
        for prefix in demo.prefixes:
            NumberPrefix.objects.update_or_create(prefix=prefix, defaults={"carrier": carrier})
        for code, amount in [*demo.prices, *demo.plan_prices]:
            PricePoint.objects.update_or_create(
                carrier=carrier,
                code=code,
                defaults={
                    "amount_minor": amount,
                    "currency": demo.currency,
                    "carrier_payout_minor": amount * 70 // 100,
                    "is_active": True,
                },
            )
    funnel, _ = FunnelDefinition.objects.get_or_create(
        name=DEMO_FUNNEL, defaults={"steps": DEMO_FUNNEL_STEPS, "window_seconds": 3600}
    )
    Dashboard.objects.filter(slug="overview", funnel__isnull=True).update(funnel=funnel)
    datasets = seed_demo_datasets()
    app, _ = App.objects.get_or_create(name=DEMO_APP, defaults={"webhook_url": ""})
    _seed_demo_plan(app)
    revoke_api_keys(app=app)
    issued = issue_api_key(app=app, label="seed_demo")
    return DemoData(
        app=app,
        raw_key=issued.raw_key,
        carrier_slugs=[demo.slug for demo in DEMO_CARRIERS],
        dataset_slugs=[dataset.slug for dataset in datasets],
    )


def _seed_demo_plan(app: App) -> Plan:
    """The demo app's daily VIP pass, offered on every demo carrier that takes subscriptions, with its lower
    fallback price where the carrier takes downgrade billing."""
    plan, _ = Plan.objects.update_or_create(
        app=app, code=DEMO_PLAN, defaults={"name": "VIP pass", "period": Period.DAILY, "is_active": True}
    )
    for demo in DEMO_CARRIERS:
        if demo.subscriptions:
            carrier = Carrier.objects.get(slug=demo.slug)
            price = PricePoint.objects.get(carrier=carrier, code=DEMO_PLAN_PRICE[0])
            fallback = (
                PricePoint.objects.get(carrier=carrier, code=DEMO_PLAN_FALLBACK_PRICE[0])
                if demo.downgrade_billing
                else None
            )
            PlanOffer.objects.update_or_create(
                plan=plan, carrier=carrier, defaults={"price_point": price, "fallback_price_point": fallback}
            )
    return plan


def issue_demo_traffic_key() -> str | None:
    """A fresh API key of the demo app for `demo_traffic` (its earlier ones are revoked); None without the app."""
    app = App.objects.filter(name=DEMO_APP, is_active=True).first()
    if app is None:
        return None
    revoke_api_keys(app=app, label=DEMO_TRAFFIC_KEY_LABEL)
    return issue_api_key(app=app, label=DEMO_TRAFFIC_KEY_LABEL).raw_key
