"""Settings from the environment, the production checks, and the offline API docs."""

import json
from pathlib import Path

import pytest

from tests.processes import PRODUCTION_ENV, django


def settings_value(expr: str, env: dict[str, str]) -> str:
    result = django(["shell", "-c", f"from django.conf import settings; print({expr})"], env)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def test_with_nothing_set_the_embedded_default_is_sqlite_and_eager_tasks(tmp_path: Path) -> None:
    env = {"PLAYPAY_VAR_DIR": str(tmp_path)}
    assert settings_value("settings.DATABASES['default']['ENGINE']", env) == "django.db.backends.sqlite3"
    assert settings_value("settings.CELERY_TASK_ALWAYS_EAGER", env) == "True"


def test_database_url_selects_postgresql_with_persistent_connections() -> None:
    env = {
        "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/playpay",
        "CELERY_BROKER_URL": "redis://127.0.0.1:6379/0",
    }
    db = json.loads(settings_value("__import__('json').dumps(settings.DATABASES['default'], default=str)", env))
    assert db["ENGINE"] == "playpay.postgresql"  # Django's, with waits on the server bounded
    assert db["CONN_MAX_AGE"] > 0
    assert settings_value("settings.CELERY_TASK_ALWAYS_EAGER", env) == "False"


def test_a_malformed_boolean_is_a_clear_error() -> None:
    result = django(["check"], {"DEBUG": "maybe"})
    assert result.returncode != 0
    assert "DEBUG must be a boolean" in result.stderr


def test_a_pin_confirm_wait_above_five_seconds_is_refused_at_start(tmp_path: Path) -> None:
    refused = django(["check"], {"PIN_CONFIRM_WAIT_MS": "5001", "PLAYPAY_VAR_DIR": str(tmp_path)})
    assert refused.returncode != 0
    assert "PIN_CONFIRM_WAIT_MS must be between 0 and 5000 (milliseconds), got 5001" in refused.stderr
    assert django(["check"], {"PIN_CONFIRM_WAIT_MS": "5000", "PLAYPAY_VAR_DIR": str(tmp_path)}).returncode == 0


def test_check_deploy_is_clean_under_production_settings() -> None:
    result = django(["check", "--deploy", "--fail-level", "WARNING"], PRODUCTION_ENV)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_check_deploy_warns_when_the_deployment_does_not_say_it_is_production() -> None:
    env = {key: value for key, value in PRODUCTION_ENV.items() if key != "PLAYPAY_ENV"}
    result = django(["check", "--deploy", "--fail-level", "WARNING"], env)
    assert result.returncode != 0
    assert "playpay.W001" in result.stdout + result.stderr


@pytest.mark.django_db
def test_openapi_schema_describes_the_payment_api(client) -> None:
    response = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    schema = json.loads(response.content)
    assert schema["openapi"].startswith("3.")
    assert {
        "/api/v1/payments/",
        "/api/v1/payments/{id}/",
        "/api/v1/payments/{id}/confirm/",
        "/api/v1/price-points/",
    } <= set(schema["paths"])
    create = schema["paths"]["/api/v1/payments/"]["post"]
    assert any(p["name"] == "Idempotency-Key" and p["required"] for p in create["parameters"])
    assert "ApiKey" in schema["components"]["securitySchemes"]


@pytest.mark.django_db
def test_docs_page_loads_its_assets_from_this_server_not_a_cdn(client) -> None:
    page = client.get("/api/docs/").content.decode()
    assert "swagger-ui" in page
    assert "cdn" not in page.lower()
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/" in page


@pytest.mark.django_db
def test_problem_types_are_documented_at_their_type_uri(client) -> None:
    listing = client.get("/api/problems/").json()["problem_types"]
    codes = {row["code"] for row in listing}
    assert {"idempotency_key_reused", "invalid_msisdn", "rate_limited", "validation_error"} <= codes
    one = client.get("/api/problems/idempotency_key_reused").json()
    assert one["status"] == 422
    assert client.get("/api/problems/nope").status_code == 404


def test_collectstatic_with_the_production_storage_succeeds_and_serves_hashed_assets(tmp_path: Path) -> None:
    # The deploy step of the README: every static reference (CSS urls, source maps) must resolve.
    env = PRODUCTION_ENV | {"STATIC_ROOT": str(tmp_path)}
    result = django(["collectstatic", "--noinput"], env)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "staticfiles.json").read_text())["paths"]
    hashed = manifest["vendor/chartjs/chart.umd.min.js"]
    assert hashed != "vendor/chartjs/chart.umd.min.js"
    assert (tmp_path / hashed).is_file()
    assert (tmp_path / (hashed + ".gz")).is_file()  # compressed by WhiteNoise for serving
