"""Demo data for the embedded default: sandbox carriers, price points and a demo app."""

from dataclasses import dataclass

from django.utils import timezone

from carriers.models import Carrier, NumberPrefix, PricePoint, Protocol
from payments.models import App
from payments.services.apps import issue_api_key

DEMO_APP = "Demo Game"
# (slug, name, country, number prefixes, one-click, currency, price points (code, amount))
DEMO_CARRIERS = [
    ("sandbox-gb-alpha", "Sandbox Alpha UK", "GB", ["4474"], False, "GBP", [("gems-100", 99), ("gems-500", 499)]),
    ("sandbox-gb-beta", "Sandbox Beta UK", "GB", ["4475"], True, "GBP", [("gems-100", 99), ("gems-1200", 999)]),
    ("sandbox-es", "Sandbox España", "ES", [], True, "EUR", [("gems-100", 99), ("gems-500", 499)]),
]


@dataclass(frozen=True)
class DemoData:
    app: App
    raw_key: str
    carrier_slugs: list[str]


def seed_demo_data() -> DemoData:
    for slug, name, country, prefixes, one_click, currency, prices in DEMO_CARRIERS:
        carrier, _ = Carrier.objects.update_or_create(
            slug=slug,
            defaults={
                "name": name,
                "country_id": country,
                "protocol": Protocol.SANDBOX,
                "is_active": True,
                "supports_pin": True,
                "supports_one_click": one_click,
            },
        )
        for prefix in prefixes:
            NumberPrefix.objects.update_or_create(prefix=prefix, defaults={"carrier": carrier})
        for code, amount in prices:
            PricePoint.objects.update_or_create(
                carrier=carrier,
                code=code,
                defaults={
                    "amount_minor": amount,
                    "currency": currency,
                    "carrier_payout_minor": amount * 70 // 100,
                    "is_active": True,
                },
            )
    app, _ = App.objects.get_or_create(name=DEMO_APP, defaults={"notification_url": ""})
    app.api_keys.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
    issued = issue_api_key(app=app, label="seed_demo")
    return DemoData(app=app, raw_key=issued.raw_key, carrier_slugs=[row[0] for row in DEMO_CARRIERS])
