"""MSISDN validation and routing a number to its carrier."""

import pytest

from carriers.errors import CarrierNotResolved, InvalidMsisdn
from carriers.msisdn import normalize_msisdn
from carriers.services import resolve_carrier
from playpay.redaction import mask_msisdn
from tests.factories import CarrierFactory, CountryFactory, NumberPrefixFactory


@pytest.mark.parametrize("raw", ["+447400123456", "447400123456", "00447400123456", " +44 7400 123456 "])
def test_international_forms_normalize_to_e164(raw: str) -> None:
    assert normalize_msisdn(raw) == "+447400123456"


@pytest.mark.parametrize(
    "raw", ["", "abc", "+44", "+447400", "+442071838750", "07400123456", "+44 7400 ABCDEF", "+447400123456 ext 1"]
)
def test_invalid_landline_or_national_numbers_are_refused(raw: str) -> None:
    with pytest.raises(InvalidMsisdn):
        normalize_msisdn(raw)


def test_masking_keeps_country_and_last_digits_only() -> None:
    assert mask_msisdn("+447400123456") == "+44740*****56"


def test_masking_hides_at_least_three_digits_of_a_short_number() -> None:
    assert [mask_msisdn(number) for number in ("+3581234", "+35812345", "+358123456", "+12345")] == [
        "+35***34",
        "+358***45",
        "+3581***56",
        "******",
    ]


@pytest.mark.django_db
def test_longest_prefix_wins() -> None:
    broad = NumberPrefixFactory.create(prefix="4474").carrier
    narrow = NumberPrefixFactory.create(prefix="447400", carrier=CarrierFactory.create()).carrier
    assert resolve_carrier(msisdn="+447400123456") == narrow
    assert resolve_carrier(msisdn="+447412123456") == broad


@pytest.mark.django_db
def test_inactive_carriers_are_not_routed_to() -> None:
    NumberPrefixFactory.create(prefix="4474", carrier=CarrierFactory.create(is_active=False))
    with pytest.raises(CarrierNotResolved):
        resolve_carrier(msisdn="+447400123456")


@pytest.mark.django_db
def test_the_only_active_carrier_of_a_country_takes_unrouted_numbers() -> None:
    spain = CountryFactory.create(code="ES", name="Spain", currency="EUR", dialing_code="34")
    only = CarrierFactory.create(country=spain)
    assert resolve_carrier(msisdn="+34612345678") == only
    CarrierFactory.create(country=spain)
    with pytest.raises(CarrierNotResolved):
        resolve_carrier(msisdn="+34612345678")


@pytest.mark.django_db
def test_the_range_holder_named_by_phonenumbers_is_used_when_no_prefix_matches() -> None:
    CarrierFactory.create(name="Vodafone UK")
    three = CarrierFactory.create(name="Three")
    assert resolve_carrier(msisdn="+447400123456") == three  # phonenumbers: a Three range
