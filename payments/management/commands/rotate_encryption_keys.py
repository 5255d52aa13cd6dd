from typing import Any

from django.core.management.base import BaseCommand, CommandError

from payments.services.keys import UndecryptableSecret, reencrypt_stored_secrets


class Command(BaseCommand):
    help = (
        "Re-encrypt every stored carrier credential and webhook signing secret under the newest key of "
        "CARRIER_CREDENTIALS_KEY (the first of the comma-separated list). Run it after putting a new key first; "
        "drop the old key from the list only afterwards (docs/operations.md, 'Encryption keys')."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            done = reencrypt_stored_secrets()
        except UndecryptableSecret as error:
            raise CommandError(str(error)) from error
        credentials, secrets = done.carrier_credentials, done.webhook_secrets
        self.stdout.write(f"re-encrypted {credentials} carrier credential(s) and {secrets} webhook secret(s)")
