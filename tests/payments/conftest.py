"""Fixtures of the payment tests that drive the API against carriers over real HTTP."""

from typing import Any

import pytest
from rest_framework.test import APIClient

from tenants.services import issue_api_key
from tests.factories import AppFactory


@pytest.fixture
def live(live_server: Any, settings: Any) -> str:
    """The live server's URL, which carriers call back under."""
    settings.PUBLIC_BASE_URL = live_server.url
    return str(live_server.url)


@pytest.fixture
def client() -> APIClient:
    """An API client holding a new app's key."""
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Api-Key {issue_api_key(app=AppFactory.create()).raw_key}")
    return api
