"""Carrier routing, price points and API keys are memoised per process, with a bounded staleness."""

import pytest
from rest_framework import serializers

from carriers.models import Carrier, PricePoint
from carriers.services import get_offered_price_point, resolve_carrier
from payments.api.serializers import PaymentSerializer
from payments.models import Payment
from playpay import refcache
from tenants.models import ApiKey
from tenants.services import authenticate_api_key, revoke_api_key
from tests.conftest import MSISDN, Shop


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch, settings) -> Clock:
    settings.REFERENCE_CACHE_SECONDS = 5
    fake = Clock()
    monkeypatch.setattr(refcache, "monotonic", fake)
    return fake


@pytest.mark.django_db
def test_a_change_made_through_the_models_takes_effect_at_once(shop: Shop, clock: Clock) -> None:
    assert shop.create_payment(key="before-deactivation").status_code == 201  # routing and price point cached
    shop.price_point.is_active = False
    shop.price_point.save()
    response = shop.create_payment(key="after-deactivation")
    assert response.status_code == 422
    assert response.json()["code"] == "price_point_not_found"


@pytest.mark.django_db
def test_a_change_other_processes_made_is_seen_within_the_cache_lifetime(shop: Shop, clock: Clock) -> None:
    assert get_offered_price_point(carrier=shop.carrier, code=shop.price_point.code).pk == shop.price_point.pk
    assert resolve_carrier(msisdn=MSISDN).pk == shop.carrier.pk
    # `update()` sends no signal: this is what a change made by another process looks like here.
    PricePoint.objects.filter(pk=shop.price_point.pk).update(is_active=False)
    Carrier.objects.filter(pk=shop.carrier.pk).update(is_active=False)

    clock.now += 4.9
    assert get_offered_price_point(carrier=shop.carrier, code=shop.price_point.code).pk == shop.price_point.pk
    assert resolve_carrier(msisdn=MSISDN).pk == shop.carrier.pk

    clock.now += 0.2
    with pytest.raises(Exception, match="no active price point"):
        get_offered_price_point(carrier=shop.carrier, code=shop.price_point.code)
    with pytest.raises(Exception, match="No active carrier serves"):
        resolve_carrier(msisdn=MSISDN)


@pytest.mark.django_db
def test_a_revoked_key_is_refused_at_once_and_its_secret_is_checked_every_time(shop: Shop, clock: Clock) -> None:
    assert authenticate_api_key(shop.key) is not None
    assert authenticate_api_key(shop.key[:-1] + ("x" if shop.key[-1] != "x" else "y")) is None
    revoke_api_key(api_key=ApiKey.objects.get(app=shop.app))
    assert authenticate_api_key(shop.key) is None
    assert shop.client.get("/api/v1/price-points/").status_code == 401


@pytest.mark.django_db
def test_cached_values_are_copies(shop: Shop, clock: Clock) -> None:
    # By slug and for price points, only the cache's own copy stands between callers.
    first = resolve_carrier(msisdn=MSISDN, carrier_slug=shop.carrier.slug)
    first.name = "changed by a caller"
    assert resolve_carrier(msisdn=MSISDN, carrier_slug=shop.carrier.slug).name == shop.carrier.name
    price = get_offered_price_point(carrier=shop.carrier, code=shop.price_point.code)
    price.amount_minor += 1
    assert get_offered_price_point(carrier=shop.carrier, code=shop.price_point.code).amount_minor == (
        shop.price_point.amount_minor
    )
    routed = resolve_carrier(msisdn=MSISDN)
    routed.name = "changed by a caller"
    assert resolve_carrier(msisdn=MSISDN).name == shop.carrier.name


@pytest.mark.django_db
def test_zero_turns_the_cache_off(shop: Shop, settings) -> None:
    settings.REFERENCE_CACHE_SECONDS = 0
    assert resolve_carrier(msisdn=MSISDN).pk == shop.carrier.pk
    Carrier.objects.filter(pk=shop.carrier.pk).update(is_active=False)
    with pytest.raises(Exception, match="No active carrier serves"):
        resolve_carrier(msisdn=MSISDN)


@pytest.mark.django_db
def test_the_shared_fields_render_a_payment_as_drf_own_fields_do(shop: Shop) -> None:
    shop.pay(key="render-1")
    payment = Payment.objects.select_related("carrier", "price_point").get()
    rendered = PaymentSerializer(payment).data
    # DRF's own per-instance fields, as without SharedFieldsMixin.
    generic = PaymentSerializer(payment)
    own_fields = list(serializers.Serializer._readable_fields.fget(generic))  # type: ignore[attr-defined]
    expected = {}
    for field in own_fields:
        value = field.get_attribute(payment)
        expected[field.field_name] = None if value is None else field.to_representation(value)
    assert rendered == expected
    assert set(rendered) == set(PaymentSerializer.Meta.fields)
    assert rendered["next_action"]["type"] in ("enter_pin", "wait", "none")
