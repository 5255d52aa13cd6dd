"""The sandbox is demo and test mode: never in a production deployment, nothing of it in a migrated database."""

from pathlib import Path

import pytest
from django.db import connection

from sandbox.demo import seed_demo_datasets
from tests.processes import PRODUCTION_ENV, django


def shell(code: str, env: dict[str, str]) -> str:
    result = django(["shell", "-c", code], env)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def rows_with_simulator_urls() -> list[str]:
    """Every text, varchar and JSON column of every table of the main database, searched for /simulators/."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT c.table_name, c.column_name FROM information_schema.columns c
            JOIN information_schema.tables t ON t.table_schema = c.table_schema AND t.table_name = c.table_name
            WHERE c.table_schema = current_schema() AND t.table_type = 'BASE TABLE'
              AND c.data_type IN ('text', 'character varying', 'character', 'json', 'jsonb')
            ORDER BY c.table_name, c.column_name
            """
        )
        columns = cursor.fetchall()
        assert len(columns) > 50  # every app's tables are searched, not none
        found = []
        for table, column in columns:
            quoted_table, quoted_column = connection.ops.quote_name(table), connection.ops.quote_name(column)
            cursor.execute(
                f"SELECT count(*) FROM {quoted_table} WHERE {quoted_column}::text LIKE %s",  # noqa: S608
                ["%/simulators/%"],
            )
            (count,) = cursor.fetchone()
            if count:
                found.append(f"{table}.{column}: {count} row(s)")
    return found


@pytest.mark.django_db
@pytest.mark.postgres
def test_a_migrated_database_holds_no_simulator_url_in_any_text_column() -> None:
    assert rows_with_simulator_urls() == []


@pytest.mark.django_db
@pytest.mark.postgres
def test_the_search_finds_a_simulator_url_once_the_demo_is_seeded() -> None:
    seed_demo_datasets()
    assert rows_with_simulator_urls() == ["reporting_dataset.api_url: 2 row(s)"]


def test_production_settings_without_the_sandbox_route_no_simulator_and_install_no_sandbox_app() -> None:
    code = (
        "from django.conf import settings; from django.urls import Resolver404, resolve\n"
        "print('sandbox' in settings.INSTALLED_APPS, settings.SANDBOX)\n"
        "for url in ('/simulators/fx/rates', '/simulators/camara/_settings', '/simulators/parlayx/_sms'):\n"
        "    try:\n"
        "        resolve(url)\n"
        "        print('resolves', url)\n"
        "    except Resolver404:\n"
        "        pass\n"
        "print('healthz', resolve('/healthz').url_name)\n"
    )
    assert shell(code, PRODUCTION_ENV).splitlines()[-2:] == ["False False", "healthz health"]


def test_debug_alone_does_not_turn_the_sandbox_on_in_production() -> None:
    code = "from django.conf import settings; print('sandbox' in settings.INSTALLED_APPS)"
    assert shell(code, PRODUCTION_ENV | {"DEBUG": "true"}).splitlines()[-1] == "False"


@pytest.mark.parametrize("switch", ["SANDBOX", "CARRIER_SIMULATORS"])
def test_production_refuses_to_start_with_the_sandbox_on(switch: str) -> None:
    result = django(["check"], PRODUCTION_ENV | {switch: "true"})
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert "SANDBOX is on in a production deployment (PLAYPAY_ENV=production)" in result.stderr
    assert "Unset SANDBOX and CARRIER_SIMULATORS" in result.stderr


def test_the_embedded_default_has_the_sandbox_on(tmp_path: Path) -> None:
    code = "from django.urls import resolve; print(resolve('/simulators/fx/rates').url_name)"
    assert shell(code, {"DEBUG": "true", "PLAYPAY_VAR_DIR": str(tmp_path)}).splitlines()[-1] == "simulator-fx-rates"


def test_an_unknown_deployment_kind_is_a_clear_error(tmp_path: Path) -> None:
    result = django(["check"], {"PLAYPAY_ENV": "prod", "PLAYPAY_VAR_DIR": str(tmp_path)})
    assert result.returncode != 0
    assert "PLAYPAY_ENV must be development, staging or production, got 'prod'" in result.stderr


def test_a_sandbox_carrier_without_the_sandbox_is_a_clear_error_not_a_crash() -> None:
    code = (
        "from carriers.adapters import adapter_for\n"
        "from carriers.errors import ProtocolUnavailable\n"
        "from carriers.models import Carrier\n"
        "try:\n"
        "    adapter_for(Carrier(slug='old-demo', protocol='sandbox'))\n"
        "except ProtocolUnavailable as error:\n"
        "    print(error.code, '|', error.detail)\n"
    )
    line = shell(code, PRODUCTION_ENV).splitlines()[-1]
    code_, detail = line.split(" | ")
    assert code_ == "carrier_protocol_unavailable"
    assert "available only when the sandbox is on" in detail
