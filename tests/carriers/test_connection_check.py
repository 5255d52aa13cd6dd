"""Test connection is a protocol-level check, over real HTTP to the simulators: success only on success."""

import socket

import httpx
import pytest

from carriers.adapters.base import Outcome
from carriers.errors import ErrorCode
from carriers.models import Carrier
from carriers.services import check_carrier_connection
from journal.models import StaffAction
from tests.conftest import StaffClient
from tests.factories import CarrierFactory
from tests.payments.carrier_helpers import PROTOCOL_CREDENTIALS, simulated_carrier

pytestmark = pytest.mark.postgres

PROTOCOLS = ["camara", "parlayx", "aggregator"]
# A credential each simulator checks, made wrong.
WRONG_CREDENTIALS = {
    "camara": {"client_secret": "not-the-secret"},
    "parlayx": {"sp_password": "not-the-password"},
    "aggregator": {"api_secret": "not-the-secret"},
}


def elsewhere(carrier: Carrier, endpoint: str) -> Carrier:
    carrier.endpoint = endpoint
    carrier.save()
    return carrier


def closed_port_url() -> str:
    """A loopback URL nothing listens on: the carrier is down."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/api"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_healthy_carrier_passes_its_protocols_check(simulator_server: str, protocol: str) -> None:
    carrier = simulated_carrier(simulator_server, protocol)
    result = check_carrier_connection(carrier=carrier)
    assert (result.outcome, result.error_code) == (Outcome.SUCCEEDED, None), result


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_wrong_credentials_fail_the_check_as_rejected(simulator_server: str, protocol: str) -> None:
    carrier = simulated_carrier(simulator_server, protocol)
    carrier.credentials = {**PROTOCOL_CREDENTIALS[protocol], **WRONG_CREDENTIALS[protocol]}
    carrier.save()
    result = check_carrier_connection(carrier=carrier)
    assert (result.outcome, result.error_code) == (Outcome.FAILED, ErrorCode.REJECTED), result
    assert "credentials" in result.raw_message


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_an_endpoint_that_answers_404_fails_the_check(simulator_server: str, protocol: str) -> None:
    # The server is up, but nothing of the protocol lives there: a plain 404 proves nothing.
    carrier = elsewhere(simulated_carrier(simulator_server, protocol), f"{simulator_server}/simulators/nowhere")
    result = check_carrier_connection(carrier=carrier)
    assert result.outcome == Outcome.FAILED, result
    assert "404" in result.raw_code


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_carrier_that_is_down_fails_the_check_as_unavailable(simulator_server: str, protocol: str) -> None:
    carrier = elsewhere(simulated_carrier(simulator_server, protocol), closed_port_url())
    result = check_carrier_connection(carrier=carrier)
    assert (result.outcome, result.error_code) == (Outcome.FAILED, ErrorCode.CARRIER_UNAVAILABLE), result


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_carrier_in_an_outage_fails_the_check(simulator_server: str, protocol: str) -> None:
    carrier = simulated_carrier(simulator_server, protocol)
    assert httpx.post(f"{carrier.endpoint}/_settings", json={"outage": True}, timeout=5).status_code == 200
    result = check_carrier_connection(carrier=carrier)
    assert (result.outcome, result.error_code) == (Outcome.FAILED, ErrorCode.CARRIER_UNAVAILABLE), result


@pytest.mark.django_db
def test_the_sandbox_carrier_passes_its_own_check() -> None:
    result = check_carrier_connection(carrier=CarrierFactory.create(protocol="sandbox", endpoint=""))
    assert (result.outcome, result.raw_code) == (Outcome.SUCCEEDED, "SANDBOX_OK")


def test_test_connection_in_the_admin_says_ok_only_on_success_and_is_recorded(
    simulator_server: str, staff_client: StaffClient
) -> None:
    client = staff_client("operations")
    carrier: Carrier = simulated_carrier(simulator_server, "aggregator")
    url = f"/admin/carriers/carrier/{carrier.pk}/test-connection/"
    assert client.get(url).status_code == 403  # a POST only: it calls the carrier
    page = client.post(url, follow=True).content.decode()
    assert "connection OK: signed ping of playpay-demo" in page
    carrier.credentials = {**carrier.credentials, "api_secret": "wrong"}
    carrier.save()
    page = client.post(url, follow=True).content.decode()
    assert "connection failed (rejected, HTTP_401)" in page
    assert "connection OK" not in page
    outcomes = list(StaffAction.objects.filter(action="test_connection").values_list("outcome", flat=True))
    assert [o.split(" ")[1] for o in outcomes] == ["failed", "OK:"]
