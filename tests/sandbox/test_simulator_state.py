"""The simulators' shared state, in one process: kept in the database, outside the caller's transaction, checked
on the way in. (tests/sandbox/test_shared_state.py runs them behind several gunicorn workers.)"""

import base64
import json
import threading
from decimal import Decimal

import pytest
from django.db import connections
from django.test import Client

from sandbox.models import SimulatorRecord, SimulatorState
from sandbox.simulators import core

pytestmark = pytest.mark.django_db

PAYMENTS = "/simulators/camara/carrier-billing/v0.4/payments"


def _token(client: Client) -> str:
    basic = base64.b64encode(b"playpay:camara-secret").decode()
    response = client.post(
        "/simulators/camara/oauth2/token",
        {"grant_type": "client_credentials", "scope": "carrier-billing:payments:read"},
        HTTP_AUTHORIZATION=f"Basic {basic}",
    )
    assert response.status_code == 200, response.content
    return str(response.json()["access_token"])


def _seen_by_another_connection(query: str, *params: str) -> list[tuple[object, ...]]:
    """What a connection other than the test's (inside its transaction) reads: the committed state."""
    rows: list[tuple[object, ...]] = []

    def read() -> None:
        try:
            with connections["default"].cursor() as cursor:
                cursor.execute(query, params)
                rows.extend(cursor.fetchall())
        finally:
            connections.close_all()

    thread = threading.Thread(target=read)
    thread.start()
    thread.join(timeout=10)
    return rows


def test_a_change_made_inside_the_callers_transaction_is_committed_at_once() -> None:
    core.simulator("fx").configure(latency_ms=25, outage=True)
    core.simulator("camara").records.put("kept-for-the-test", {"amount": Decimal("4.990")})

    settings = _seen_by_another_connection("SELECT settings FROM sandbox_simulatorstate WHERE name = %s", "fx")
    record = SimulatorRecord.objects.get(simulator="camara", key="kept-for-the-test")

    assert [json.loads(str(row[0])) for row in settings] == [{"latency_ms": 25, "outage": True}]
    assert record.data == {"amount": Decimal("4.990")}  # an amount stays exact


def test_a_reset_forgets_tokens_sms_and_settings_but_not_registered_client_keys(client: Client) -> None:
    camara = core.simulator("camara")
    token = _token(client)
    camara.send_sms("+447700900001", "hello")
    camara.configure(pin_length=8)
    camara.records.put(core.KEPT + "camara-client:other", {"public_key": "PEM"})

    client.post("/simulators/camara/_reset")

    assert client.get(PAYMENTS, HTTP_AUTHORIZATION=f"Bearer {token}").status_code == 401
    assert camara.sms["+447700900001"] == []
    assert camara.settings.pin_length == 6
    assert core.KEPT + "camara-client:other" in camara.records


def test_settings_outside_their_bounds_or_of_the_wrong_type_are_refused(client: Client) -> None:
    for changes in ({"latency_ms": -1}, {"latency_ms": 10**9}, {"outage": "yes"}, {"default_callbacks": "sometimes"}):
        response = client.post("/simulators/camara/_settings", changes, content_type="application/json")

        assert response.status_code == 400, changes
    assert client.get("/simulators/camara/_settings").json()["latency_ms"] == 0


def test_an_unknown_simulator_has_no_settings(client: Client) -> None:
    response = client.post("/simulators/nope/_settings", {"outage": True}, content_type="application/json")

    assert response.status_code == 404
    assert not SimulatorState.objects.filter(name="nope").exists()


def test_an_id_the_database_cannot_hold_is_refused_not_a_server_error(client: Client) -> None:
    token = _token(client)

    response = client.get(f"{PAYMENTS}/cb%00x", HTTP_AUTHORIZATION=f"Bearer {token}")

    assert response.status_code == 400, response.content


def test_every_answer_names_the_process_that_gave_it(client: Client) -> None:
    response = client.get("/simulators/camara/_sms", {"msisdn": "+447700900001"})

    assert response.headers[core.PROCESS_HEADER].isdigit()
