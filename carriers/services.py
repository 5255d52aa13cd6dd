"""Carrier rules: which carrier serves a number, which price points it offers."""

import copy

import phonenumbers
from django.db.models import QuerySet
from phonenumbers import carrier as number_carrier

from carriers.adapters import adapter_for
from carriers.adapters.base import CarrierResult
from carriers.errors import (
    CarrierCountryMismatch,
    CarrierNotFound,
    CarrierNotReady,
    CarrierNotResolved,
    PricePointNotFound,
)
from carriers.models import Carrier, Country, NumberPrefix, PricePoint, Protocol
from carriers.msisdn import region_of
from playpay.refcache import RefCache

_routes: RefCache[dict[str, Carrier]] = RefCache("number routes", watch=(NumberPrefix, Carrier, Country))
_carriers: RefCache[Carrier] = RefCache("carriers by slug", watch=(Carrier, Country))
_regions: RefCache[list[Carrier]] = RefCache("carriers by region", watch=(Carrier, Country))
_price_points: RefCache[PricePoint] = RefCache("price points", watch=(PricePoint,))


def resolve_carrier(*, msisdn: str, carrier_slug: str | None = None) -> Carrier:
    """The active carrier that bills `msisdn` (E.164): the one named, or the one its number range routes to.

    Routing takes the longest configured number prefix; then the operator that
    phonenumbers names for the number's range (the original range holder: a ported
    number routes wrongly, so the request may name the carrier); then the only active
    carrier of the number's country. Reads go through process-local caches
    (`playpay.refcache`): a change takes effect everywhere within REFERENCE_CACHE_SECONDS.
    """
    if carrier_slug:
        carrier = _carriers.get(
            carrier_slug,
            lambda: Carrier.objects.select_related("country").filter(slug=carrier_slug, is_active=True).first(),
        )
        if carrier is None:
            raise CarrierNotFound(f"No active carrier has the slug {carrier_slug!r}.")
        number_cc = str(phonenumbers.parse(msisdn, None).country_code)
        if carrier.country.dialing_code and carrier.country.dialing_code != number_cc:
            raise CarrierCountryMismatch(
                f"Carrier {carrier.slug!r} serves {carrier.country.name}; the number's country code is +{number_cc}."
            )
        return carrier

    routes = _routes.get("all", _load_routes) or {}
    digits = msisdn.lstrip("+")
    for end in range(len(digits), 1, -1):
        routed = routes.get(digits[:end])
        if routed is not None:
            return copy.copy(routed)
    region = region_of(msisdn)
    in_region = (
        _regions.get(
            region, lambda: list(Carrier.objects.select_related("country").filter(country_id=region, is_active=True))
        )
        or []
    )
    range_holder = number_carrier.name_for_number(phonenumbers.parse(msisdn, None), "en")
    if range_holder:
        for candidate in in_region:
            if candidate.name.upper() == range_holder.upper():
                return copy.copy(candidate)
    if len(in_region) == 1:
        return copy.copy(in_region[0])
    raise CarrierNotResolved(
        "No active carrier serves this number's range; pass `carrier` with the slug of the player's carrier."
    )


def _load_routes() -> dict[str, Carrier]:
    """Every configured number prefix of an active carrier, to its carrier."""
    prefixes = NumberPrefix.objects.filter(carrier__is_active=True).select_related("carrier__country")
    return {route.prefix: route.carrier for route in prefixes}


def get_offered_price_point(*, carrier: Carrier, code: str) -> PricePoint:
    price_point = _price_points.get(
        (carrier.pk, code), lambda: PricePoint.objects.filter(carrier=carrier, code=code, is_active=True).first()
    )
    if price_point is None:
        raise PricePointNotFound(f"Carrier {carrier.slug!r} has no active price point {code!r}.")
    return price_point


def offered_price_points(*, country: str | None = None, carrier: str | None = None) -> QuerySet[PricePoint]:
    """Active price points of active carriers, optionally for one country (alpha-2) or carrier (slug)."""
    queryset = PricePoint.objects.filter(is_active=True, carrier__is_active=True).select_related("carrier")
    if country:
        queryset = queryset.filter(carrier__country_id=country.upper())
    if carrier:
        queryset = queryset.filter(carrier__slug=carrier)
    return queryset.order_by("carrier__slug", "amount_minor", "code")


def check_carrier_connection(*, carrier: Carrier) -> CarrierResult:
    """Ask the carrier's adapter whether it can reach the carrier with its credentials; moves no money."""
    return adapter_for(carrier).check_connection()


def activation_blockers(carrier: Carrier) -> dict[str, str]:
    """Why `carrier` may not take payments yet, in words for the person activating it, by what is missing
    ("endpoint", "price_points"); empty when it may.

    A carrier takes payments once it is reachable (an endpoint, but for the sandbox) and offers a price to
    charge (an active price point). The operator catalogue's carriers have neither until onboarded."""
    blockers = {}
    if carrier.protocol != Protocol.SANDBOX and not carrier.endpoint:
        blockers["endpoint"] = "it has no endpoint: give the base URL of the carrier's API"
    if carrier.pk is None or not carrier.price_points.filter(is_active=True).exists():
        blockers["price_points"] = "it has no active price point: add one first"
    return blockers


def set_carrier_active(*, carrier: Carrier, active: bool, reason: str) -> None:
    """Activates or deactivates `carrier`, with the reason kept in its configuration history. Activation is
    refused (CarrierNotReady, nothing saved) while `activation_blockers` names anything."""
    if active and (blockers := activation_blockers(carrier)):
        raise CarrierNotReady(f"{carrier.name} cannot be activated: {'; '.join(blockers.values())}.")
    carrier.is_active = active
    carrier._change_reason = reason  # type: ignore[attr-defined]  # read by django-simple-history
    carrier.save(update_fields=["is_active", "updated_at"])


def onboard_carrier(*, carrier: Carrier, reason: str) -> Carrier:
    """Saves an operator of the catalogue as a configured carrier, inactive: taking payments waits for its
    price points and its activation (`set_carrier_active`). Saved as a Carrier, never through a proxy, so
    that the configuration history and the reference caches follow it."""
    configured = Carrier(**{field.attname: getattr(carrier, field.attname) for field in Carrier._meta.concrete_fields})
    configured._state.adding = False
    configured.is_active = False
    configured._change_reason = reason  # type: ignore[attr-defined]  # read by django-simple-history
    configured.save()
    return configured
