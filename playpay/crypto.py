"""Secrets at rest (carrier credentials, webhook signing secrets): encrypted with Fernet, never shown back in clear."""

import base64
import hashlib
import json
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings


def _fernet() -> Fernet:
    secret = settings.CARRIER_CREDENTIALS_KEY or settings.SECRET_KEY
    # The label is part of the key: every secret stored so far was encrypted under it.
    key = base64.urlsafe_b64encode(hashlib.sha256(f"carrier-credentials:{secret}".encode()).digest())
    return Fernet(key)


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
