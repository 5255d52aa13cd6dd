from argparse import ArgumentParser
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.core.validators import URLValidator

from tenants.models import App
from tenants.services import create_app


class Command(BaseCommand):
    help = "Create an App (a game backend) and print its new API key alone on the last line."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("name")
        # --notification-url: the option's name before outbound calls to apps were called webhooks.
        parser.add_argument("--webhook-url", "--notification-url", dest="webhook_url", default="")

    def handle(self, *args: Any, **options: Any) -> None:
        name = options["name"].strip()
        if not name or len(name) > 100:
            raise CommandError("The app name must be 1 to 100 characters.")
        if App.objects.filter(name=name).exists():
            raise CommandError(f"An app named {name!r} exists; issue it a new key in the admin.")
        if options["webhook_url"]:
            try:
                URLValidator()(options["webhook_url"])
            except ValidationError as exc:
                raise CommandError(f"--webhook-url: {exc.messages[0]}") from exc
        app, issued = create_app(name=name, webhook_url=options["webhook_url"])
        self.stdout.write(f"Created app {app.name} ({app.public_id}). Its API key, shown only now:")
        self.stdout.write(issued.raw_key)
