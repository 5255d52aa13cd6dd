"""factory_boy factories for the domain models."""

from factory.declarations import Sequence, SubFactory
from factory.django import DjangoModelFactory

from carriers.models import Carrier, Country, NumberPrefix, PricePoint, Protocol
from payments.models import App


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
