"""Rotating the key that encrypts stored secrets: carrier credentials and webhook signing secrets."""

from dataclasses import dataclass

from django.db import models, transaction

from carriers.models import Carrier
from payments.models import WebhookSecret
from playpay.crypto import reencrypt


class UndecryptableSecret(Exception):
    """A stored secret cannot be decrypted with any configured key (an operator's error, not an API one)."""


@dataclass(frozen=True)
class Reencrypted:
    carrier_credentials: int
    webhook_secrets: int


def reencrypt_stored_secrets() -> Reencrypted:
    """Re-encrypt every stored secret under the newest key, all or nothing."""
    with transaction.atomic():
        return Reencrypted(
            carrier_credentials=_reencrypt(Carrier, "credentials_encrypted"),
            webhook_secrets=_reencrypt(WebhookSecret, "secret_encrypted"),
        )


def _reencrypt(model: type[models.Model], field: str) -> int:
    count = 0
    rows = model._default_manager.exclude(**{field: ""}).values_list("pk", field)
    for pk, token in rows.iterator():
        try:
            fresh = reencrypt(token)
        except ValueError as exc:
            raise UndecryptableSecret(
                f"{model._meta.verbose_name} {pk}: {exc}; nothing was changed. Is every key it may have been "
                "encrypted under still in CARRIER_CREDENTIALS_KEY?"
            ) from exc
        # Unless it changed meanwhile: then it was written under the newest key already.
        count += model._default_manager.filter(pk=pk, **{field: token}).update(**{field: fresh})
    return count
