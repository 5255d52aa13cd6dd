"""Operator commands: create_app (seed_demo is the sandbox's: tests/sandbox)."""

import io

import pytest
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from tenants.models import App

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
