"""Operator commands: create_app and seed_demo."""

import io

import pytest
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from carriers.models import Carrier, PricePoint
from funnel.models import FunnelDefinition
from payments.models import ApiKey, App
from reporting.models import Dashboard

pytestmark = pytest.mark.django_db


def run(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_create_app_prints_a_working_key_alone_on_the_last_line() -> None:
    key = run("create_app", "Space Miners").strip().splitlines()[-1]
    assert key.startswith("pp_")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {key}")
    assert client.get("/api/v1/payments/").status_code == 200
    assert App.objects.get(name="Space Miners").api_keys.get().key_hash != key  # only a hash is stored


def test_create_app_refuses_a_duplicate_name_and_a_bad_url() -> None:
    run("create_app", "Space Miners")
    with pytest.raises(CommandError, match="exists"):
        run("create_app", "Space Miners")
    with pytest.raises(CommandError, match="webhook-url"):
        run("create_app", "Other", "--webhook-url", "not a url")


def test_seed_demo_is_safe_to_run_twice_and_only_the_newest_key_works() -> None:
    # The migration seeds it; a transactional test before this one may have emptied the table.
    Dashboard.objects.get_or_create(slug="overview", defaults={"title": "Overview"})
    first = run("seed_demo")
    second = run("seed_demo")
    keys = [line.split("=", 1)[1] for out in (first, second) for line in out.splitlines() if "PLAYPAY_API_KEY=" in line]
    demo = Carrier.objects.filter(
        slug__in=["sandbox-gb-alpha", "sandbox-gb-beta", "camara-gb", "aggregator-gb", "parlayx-es"], is_active=True
    )
    assert demo.count() == 5
    assert {carrier.protocol for carrier in demo} == {"sandbox", "camara", "aggregator", "parlayx"}
    assert demo.values("country").distinct().count() == 2
    assert all(carrier.has_credentials for carrier in demo if carrier.protocol != "sandbox")
    assert PricePoint.objects.filter(carrier__in=demo).count() == 14
    assert App.objects.filter(name="Demo Game").count() == 1
    assert ApiKey.objects.filter(app__name="Demo Game", revoked_at__isnull=True).count() == 1
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {keys[0]}")
    assert client.get("/api/v1/payments/").status_code == 401
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {keys[1]}")
    assert client.get("/api/v1/payments/").status_code == 200
    assert "password:" in second
    funnel = FunnelDefinition.objects.get(name="Demo store purchase")
    assert funnel.steps[0] == "store_opened"
    assert funnel.steps[-1] == "charge_succeeded"
    assert Dashboard.objects.get(slug="overview").funnel == funnel
