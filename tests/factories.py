"""factory_boy factories for the domain models."""

from datetime import datetime
from typing import Any

from factory.declarations import SelfAttribute, Sequence, SubFactory
from factory.django import DjangoModelFactory

from carriers.models import Carrier, Country, NumberPrefix, PricePoint, Protocol
from payments.models import Payment, PaymentFlow, PaymentStatus
from payments.services.payment_keys import attach_carrier_reference, claim_idempotency_key
from playpay.ids import new_public_id
from tenants.models import App


class CountryFactory(DjangoModelFactory[Country]):
    class Meta:
        model = Country
        django_get_or_create = ("code",)

    code = "GB"
    name = "United Kingdom"
    currency = "GBP"
    dialing_code = "44"


class CarrierFactory(DjangoModelFactory[Carrier]):
    class Meta:
        model = Carrier

    slug = Sequence(lambda n: f"test-carrier-{n}")
    name = Sequence(lambda n: f"Test Carrier {n}")
    country = SubFactory(CountryFactory)
    protocol = Protocol.SANDBOX
    is_active = True
    supports_pin = True
    supports_one_click = True


class NumberPrefixFactory(DjangoModelFactory[NumberPrefix]):
    class Meta:
        model = NumberPrefix

    carrier = SubFactory(CarrierFactory)
    prefix = "4474"


class PricePointFactory(DjangoModelFactory[PricePoint]):
    class Meta:
        model = PricePoint

    carrier = SubFactory(CarrierFactory)
    code = "gems-100"
    amount_minor = 99
    currency = "GBP"
    carrier_payout_minor = 69


class AppFactory(DjangoModelFactory[App]):
    class Meta:
        model = App

    name = Sequence(lambda n: f"Game {n}")


class PaymentFactory(DjangoModelFactory[Payment]):
    """A payment row as the payment flow leaves it, written directly (no carrier, no history, no ledger).

    Its carrier, amount and currency are its price point's unless given; `created_at` may be set (the
    model's auto_now_add would otherwise overwrite it)."""

    class Meta:
        model = Payment

    app = SubFactory(AppFactory)
    price_point = SubFactory(PricePointFactory)
    carrier = SelfAttribute("price_point.carrier")
    user_ref = "player-1"
    msisdn = "+447400123456"
    amount_minor = SelfAttribute("price_point.amount_minor")
    currency = SelfAttribute("price_point.currency")
    status = PaymentStatus.CREATED
    flow = PaymentFlow.ONE_CLICK

    @classmethod
    def _create(cls, model_class: type[Payment], *args: Any, **kwargs: Any) -> Payment:
        created_at: datetime | None = kwargs.pop("created_at", None)
        if created_at is not None:  # a public id of its time, as the payment flow makes them
            kwargs.setdefault("public_id", new_public_id(created_at))
        payment: Payment = super()._create(model_class, *args, **kwargs)
        if created_at is not None:
            model_class.objects.filter(pk=payment.pk).update(created_at=created_at)
            payment.refresh_from_db()
        # Its keys, as the services claim them (unique across the payments' months).
        claim_idempotency_key(payment)
        if payment.carrier_reference:
            attach_carrier_reference(payment, payment.carrier_reference)
        return payment
