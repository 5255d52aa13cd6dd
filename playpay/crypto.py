"""Secrets at rest (carrier credentials, webhook signing secrets): encrypted with Fernet, never shown back in clear.

settings.CARRIER_CREDENTIALS_KEY holds one or more secrets, comma-separated, newest first (SECRET_KEY when it is
empty, outside production). Values are encrypted under the newest and decrypted under any of them (MultiFernet),
so a key is rotated by putting a new one first, re-encrypting what is stored (`manage.py rotate_encryption_keys`)
and then dropping the old one.
"""

import base64
import hashlib
import json
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings


def _secrets() -> list[str]:
    configured = [secret.strip() for secret in settings.CARRIER_CREDENTIALS_KEY.split(",") if secret.strip()]
    return configured or [settings.SECRET_KEY]


def _fernet_for(secret: str) -> Fernet:
    # The label is part of the key: every secret stored so far was encrypted under it.
    key = base64.urlsafe_b64encode(hashlib.sha256(f"carrier-credentials:{secret}".encode()).digest())
    return Fernet(key)


def _fernet() -> MultiFernet:
    return MultiFernet([_fernet_for(secret) for secret in _secrets()])


def encrypt_credentials(credentials: dict[str, Any]) -> str:
    if not credentials:
        return ""
    return _fernet().encrypt(json.dumps(credentials, sort_keys=True).encode()).decode()


def decrypt_credentials(token: str) -> dict[str, Any]:
    if not token:
        return {}
    try:
        value = json.loads(_fernet().decrypt(token.encode()))
    except InvalidToken as exc:
        raise ValueError("stored secret cannot be decrypted with the configured key") from exc
    return dict(value)


def reencrypt(token: str) -> str:
    """`token` encrypted under the newest configured key instead of whichever one it was made with."""
    if not token:
        return ""
    try:
        return _fernet().rotate(token.encode()).decode()
    except InvalidToken as exc:
        raise ValueError("stored secret cannot be decrypted with any configured key") from exc
