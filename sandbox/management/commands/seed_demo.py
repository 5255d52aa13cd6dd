import secrets
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from sandbox.demo import seed_demo_data


class Command(BaseCommand):
    help = (
        "Seed demo data: sandbox carriers in GB and ES with price points, a demo app, an admin user and the "
        "FX-rate and aggregator-balance API datasets against the simulators. "
        "Safe to run again: it updates what exists, issues a fresh demo key and admin password."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        with transaction.atomic():
            demo = seed_demo_data()
            password = secrets.token_urlsafe(12)
            user_model = get_user_model()
            admin, _ = user_model.objects.get_or_create(username="admin", defaults={"email": "admin@example.com"})
            admin.is_staff = admin.is_superuser = True
            admin.set_password(password)
            admin.save()
        self.stdout.write(f"Carriers: {', '.join(demo.carrier_slugs)}")
        self.stdout.write(f"Datasets: {', '.join(demo.dataset_slugs)}")
        self.stdout.write(f"Admin: {settings.PUBLIC_BASE_URL}/admin/  user: admin  password: {password}")
        self.stdout.write(f"Demo app: {demo.app.name}. Its API key (earlier demo keys are revoked):")
        self.stdout.write(f"export PLAYPAY_API_KEY={demo.raw_key}")
