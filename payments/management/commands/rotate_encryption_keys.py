from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db import models, transaction

from carriers.models import Carrier
from payments.models import WebhookSecret
from playpay.crypto import reencrypt


class Command(BaseCommand):
    help = (
        "Re-encrypt every stored carrier credential and webhook signing secret under the newest key of "
        "CARRIER_CREDENTIALS_KEY (the first of the comma-separated list). Run it after putting a new key first; "
        "drop the old key from the list only afterwards (docs/operations.md, 'Encryption keys')."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        with transaction.atomic():
            carriers = self._reencrypt(Carrier, "credentials_encrypted")
            secrets = self._reencrypt(WebhookSecret, "secret_encrypted")
        self.stdout.write(f"re-encrypted {carriers} carrier credential(s) and {secrets} webhook secret(s)")

    def _reencrypt(self, model: type[models.Model], field: str) -> int:
        count = 0
        rows = model._default_manager.exclude(**{field: ""}).values_list("pk", field)
        for pk, token in rows.iterator():
            try:
                fresh = reencrypt(token)
            except ValueError as exc:
                raise CommandError(
                    f"{model._meta.verbose_name} {pk}: {exc}; nothing was changed. Is every key it may have been "
                    "encrypted under still in CARRIER_CREDENTIALS_KEY?"
                ) from exc
            # Unless it changed meanwhile: then it was written under the newest key already.
            count += model._default_manager.filter(pk=pk, **{field: token}).update(**{field: fresh})
        return count
