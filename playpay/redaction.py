"""What never reaches the journal or the logs: secrets are removed, phone numbers masked (with a keyed hash kept)."""

import hashlib
import hmac
import re
from typing import Any

from django.conf import settings

REMOVED = "[removed]"
# Keys whose values are secrets, wherever they appear (headers, bodies, credentials), compared lower-case.
SECRET_KEYS = {
    "authorization",
    "api_key",
    "api_secret",
    "callback_secret",
    "client_secret",
    "client_assertion",
    "private_key",
    "password",
    "sp_password",
    "secret",
    "pin",
    "token",
    "access_token",
    "accesstoken",
    "notification_token",
    "signature",
    "x-signature",
    "webhook-signature",
    "credentials",
    "sinkcredential",
    "cookie",
    "x-csrftoken",
}
# E.164-looking numbers inside any text: + and 8 to 15 digits, or tel: URIs; not a run of digits inside
# a longer token (a UUID's all-digit group, a hex id), which is no phone number.
_PHONE = re.compile(r"(?:tel:)?\+?(?<![\w-])[1-9]\d{7,14}(?![\w-])")


def mask_msisdn(msisdn: str) -> str:
    """`+447400123456` -> `+44740*****56`: enough to recognise, not enough to dial; at least three digits are
    hidden however short the number (`+3581234` -> `+35***34`)."""
    if len(msisdn) <= 6:
        return "*" * len(msisdn)
    hidden = max(len(msisdn) - 8, 3)
    return msisdn[: len(msisdn) - 2 - hidden] + "*" * hidden + msisdn[-2:]


def sql_mask_msisdn(value: str) -> str:
    """`mask_msisdn` as a PostgreSQL expression over the SQL expression `value` (for rows the database writes)."""
    length, hidden = f"length({value})", f"greatest(length({value}) - 8, 3)"
    return (
        f"CASE WHEN {length} <= 6 THEN repeat('*', {length}) "
        f"ELSE left({value}, {length} - 2 - {hidden}) || repeat('*', {hidden}) || right({value}, 2) END"
    )


def msisdn_hash(msisdn: str) -> str:
    """A keyed hash of a number, so staff can find its records without the number being stored."""
    key = (settings.JOURNAL_HASH_KEY or settings.SECRET_KEY).encode()
    return hmac.new(key, msisdn.encode(), hashlib.sha256).hexdigest()


def _mask_text(text: str) -> str:
    def mask(match: re.Match[str]) -> str:
        raw = match.group(0)
        prefix = "tel:" if raw.startswith("tel:") else ""
        number = raw.removeprefix("tel:")
        return prefix + mask_msisdn(number if number.startswith("+") else "+" + number)

    return _PHONE.sub(mask, text)


def redact(value: Any) -> Any:
    """A copy of `value` with secret-keyed values removed and phone numbers masked everywhere."""
    if isinstance(value, dict):
        return {key: REMOVED if str(key).lower() in SECRET_KEYS else redact(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redact(item) for item in value]
    if isinstance(value, str):
        return _mask_text(value)
    return value
