"""MSISDN parsing (phonenumbers), E.164 normalisation and masking for logs."""

import contextlib
from collections.abc import Iterable

import phonenumbers

from carriers.errors import InvalidMsisdn

_MOBILE_TYPES = {phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE}


def normalize_msisdn(raw: str, *, region: str | None = None) -> str:
    """Return the number in E.164 (`+447400123456`), or raise InvalidMsisdn.

    Numbers must be international: with a leading `+` or `00`, or bare digits that
    start with the country code; with a `region` (ISO 3166 alpha-2), bare digits are read in that
    country's national format instead (`07400123456` in GB). Letters are refused (phonenumbers would
    read them as a keypad's, `ABC` as `222`).
    """
    text = (raw or "").strip()
    if any(character.isalpha() for character in text):
        raise InvalidMsisdn(f"{raw!r} holds letters; a phone number is digits")
    if text.startswith("00"):
        text = "+" + text[2:]
    elif not text.startswith("+") and region is None:
        text = "+" + text
    try:
        number = phonenumbers.parse(text, None if text.startswith("+") else region)
    except phonenumbers.NumberParseException as exc:
        raise InvalidMsisdn(f"{raw!r} is not a phone number in international format") from exc
    if not phonenumbers.is_valid_number(number):
        raise InvalidMsisdn(f"{raw!r} is not a valid phone number")
    if phonenumbers.number_type(number) not in _MOBILE_TYPES:
        raise InvalidMsisdn(f"{raw!r} is not a mobile number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def region_of(msisdn: str) -> str:
    """ISO 3166 alpha-2 region of an E.164 number."""
    return phonenumbers.region_code_for_number(phonenumbers.parse(msisdn, None)) or ""


def msisdn_readings(raw: str, *, regions: Iterable[str]) -> list[str]:
    """Every E.164 number `raw` can be (for a search): as an international number, and in the national
    format of each of `regions`; none when it is no mobile number in any of them."""
    readings: list[str] = []
    for region in (None, *regions):
        with contextlib.suppress(InvalidMsisdn):
            number = normalize_msisdn(raw, region=region)
            if number not in readings:
                readings.append(number)
    return readings
