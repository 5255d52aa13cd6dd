"""The simulators behind several gunicorn workers behave as one carrier: a token, a texted PIN, a settings change,
a charge and a reset made through one worker hold on every other.

The carrier is this code in its own processes (gunicorn, 3 sync workers, each serving one request at a time),
with the sandbox on and its own PostgreSQL database (named after the xdist worker, dropped at the end). Every
simulator answer says which process gave it (X-Simulator-Process): requests sent at once while the simulator
adds latency are served by different workers, which the tests check rather than assume.
"""

import os
import re
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import requests
from psycopg import sql

from tests.deploy.processes import Processes, free_port, wait_for

pytestmark = [pytest.mark.postgres]

ROOT = Path(__file__).resolve().parents[2]
WORKERS = 3
PROCESS = "X-Simulator-Process"
SCOPES = "carrier-billing:payments:create carrier-billing:payments:read carrier-billing:payments:write"
PAYMENTS = "/simulators/camara/carrier-billing/v0.4/payments"
# Long enough that requests sent together overlap on the workers (so that each goes to an idle one).
OVERLAP_MS = 300


@dataclass
class Answer:
    status: int
    process: str
    body: Any


@dataclass
class Carrier:
    base: str

    def call(self, method: str, path: str, *, token: str = "", **kwargs: Any) -> Answer:
        headers = {"Connection": "close"}  # a new connection each time: any idle worker may take it
        if token:
            headers["Authorization"] = f"Bearer {token}"
        response = requests.request(method, self.base + path, headers=headers, timeout=20, **kwargs)
        try:
            body = response.json()
        except ValueError:
            body = response.text
        return Answer(response.status_code, response.headers.get(PROCESS, ""), body)

    def settings(self, **changes: Any) -> Answer:
        answer = self.call("POST", "/simulators/camara/_settings", json=changes)
        assert answer.status == 200, answer
        return answer

    def token(self) -> str:
        answer = self.call(
            "POST",
            "/simulators/camara/oauth2/token",
            data={"grant_type": "client_credentials", "scope": SCOPES},
            auth=("playpay", "camara-secret"),
        )
        assert answer.status == 200, answer
        return str(answer.body["access_token"])

    def together(self, count: int, call: Callable[[], Answer]) -> list[Answer]:
        """`count` calls sent at once, each on its own connection."""
        with ThreadPoolExecutor(max_workers=count) as pool:
            return list(pool.map(lambda _: call(), range(count)))

    def on_every_worker(self, call: Callable[[], Answer], *, rounds: int = 5) -> list[Answer]:
        """The answers of rounds of calls sent at once until every worker has answered (bounded)."""
        answers: list[Answer] = []
        for _ in range(rounds):
            answers += self.together(WORKERS * 3, call)
            if len({answer.process for answer in answers}) >= WORKERS:
                break
        assert len({answer.process for answer in answers}) == WORKERS, [a.process for a in answers]
        return answers


def _database_url(base: str, name: str) -> str:
    return urlunsplit(urlsplit(base)._replace(path=f"/{name}"))


@pytest.fixture(scope="module")
def carrier(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Iterator[Carrier]:
    base_url = os.environ.get("DATABASE_URL", "")
    assert base_url.startswith("postgres"), "this test needs PostgreSQL: set DATABASE_URL=postgres://…"
    name = f"{urlsplit(base_url).path.strip('/')}_simulators_{worker_id}"
    admin_url = _database_url(base_url, "postgres")

    def drop() -> None:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    drop()
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    tmp = tmp_path_factory.mktemp("simulators")
    port = free_port()
    env = {key: value for key, value in os.environ.items() if key in ("PATH", "HOME", "LANG", "LC_ALL", "TZ")}
    env |= {
        "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
        "PYTHONUNBUFFERED": "1",
        "DEBUG": "false",
        "SANDBOX": "true",
        "SECRET_KEY": "simulators-" + uuid.uuid4().hex + uuid.uuid4().hex,
        "ALLOWED_HOSTS": "127.0.0.1",
        "DATABASE_URL": _database_url(base_url, name),
        "PLAYPAY_VAR_DIR": str(tmp / "var"),
    }
    migrated = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    try:
        with Processes(log_dir=tmp, cwd=ROOT) as processes:
            server = processes.start(
                "carrier",
                [
                    *(sys.executable, "-m", "gunicorn", "playpay.wsgi:application"),
                    *(
                        "--workers",
                        str(WORKERS),
                        "--worker-class",
                        "sync",
                        "--threads",
                        "1",
                        "--bind",
                        f"127.0.0.1:{port}",
                    ),
                    *("--control-socket", str(tmp / "carrier.ctl")),
                ],
                env,
            )
            carrier = Carrier(f"http://127.0.0.1:{port}")
            wait_for(
                "the carrier to answer",
                lambda: carrier.call("GET", "/simulators/camara/_settings").status == 200,
                timeout=30,
            )
            yield carrier
            server.assert_running()
    finally:
        drop()


@pytest.fixture
def camara(carrier: Carrier) -> Carrier:
    answer = carrier.call("POST", "/simulators/camara/_reset")
    assert answer.status == 200, answer
    return carrier


def _prepare(carrier: Carrier, token: str, msisdn: str) -> dict[str, Any]:
    body = {
        "amountTransaction": {
            "phoneNumber": msisdn,
            "paymentAmount": {"chargingInformation": {"amount": 4.99, "currency": "GBP", "description": "Gems"}},
            "referenceCode": f"ref-{uuid.uuid4().hex}",
        }
    }
    answer = carrier.call("POST", f"{PAYMENTS}/prepare", token=token, json=body)
    assert answer.status == 201, answer
    payment: dict[str, Any] = answer.body
    return payment


def _texted_code(carrier: Carrier, msisdn: str) -> str:
    inbox = carrier.call("GET", "/simulators/camara/_sms", params={"msisdn": msisdn})
    found = re.findall(r"code is (\d+)", " ".join(inbox.body["messages"]))
    assert found, inbox
    return str(found[-1])


def _validated(carrier: Carrier, token: str, msisdn: str) -> str:
    payment = _prepare(carrier, token, msisdn)
    validation = {
        "authorizationId": payment["validationInfo"]["authorizationId"],
        "code": _texted_code(carrier, msisdn),
    }
    answer = carrier.call("POST", f"{PAYMENTS}/{payment['paymentId']}/validate", token=token, json=validation)
    assert answer.status == 204, answer
    return str(payment["paymentId"])


def test_a_token_issued_by_one_worker_is_accepted_by_every_worker(camara: Carrier) -> None:
    token = camara.token()
    camara.settings(latency_ms=OVERLAP_MS)

    answers = camara.on_every_worker(lambda: camara.call("GET", PAYMENTS, token=token))

    assert {answer.status for answer in answers} == {200}, answers


def test_a_pin_texted_through_one_worker_is_read_and_validated_through_others(camara: Carrier) -> None:
    token = camara.token()
    msisdn = "+447700900123"
    payment = _prepare(camara, token, msisdn)

    # The handset answers at once: rounds of reads sent together reach every worker all the same.
    inboxes = camara.on_every_worker(
        lambda: camara.call("GET", "/simulators/camara/_sms", params={"msisdn": msisdn}), rounds=30
    )
    validation = {"authorizationId": payment["validationInfo"]["authorizationId"], "code": _texted_code(camara, msisdn)}
    validated = camara.call("POST", f"{PAYMENTS}/{payment['paymentId']}/validate", token=token, json=validation)

    assert {len(answer.body["messages"]) for answer in inboxes} == {1}, inboxes
    assert {answer.body["messages"][0] for answer in inboxes} == {f"Your PlayPay code is {validation['code']}"}
    assert validated.status == 204, validated


def test_a_settings_change_through_one_worker_applies_on_every_worker(camara: Carrier) -> None:
    token = camara.token()
    changed = camara.settings(latency_ms=OVERLAP_MS, outage=True)

    down = camara.on_every_worker(lambda: camara.call("GET", PAYMENTS, token=token))
    camara.settings(outage=False)
    up = camara.on_every_worker(lambda: camara.call("GET", PAYMENTS, token=token))

    assert changed.body["outage"] is True
    assert {answer.status for answer in down} == {503}
    assert {answer.status for answer in up} == {200}


def test_a_payment_confirmed_twice_at_once_on_two_workers_is_charged_once(camara: Carrier) -> None:
    token = camara.token()
    msisdn = "+447700900456"
    payments = [_validated(camara, token, msisdn) for _ in range(3)]
    camara.settings(latency_ms=OVERLAP_MS)

    outcomes = []
    for payment_id in payments:
        start = threading.Barrier(2)

        def confirm(payment_id: str = payment_id, start: threading.Barrier = start) -> Answer:
            start.wait(timeout=10)
            return camara.call("POST", f"{PAYMENTS}/{payment_id}/confirm", token=token, json={"phoneNumber": msisdn})

        outcomes.append(camara.together(2, confirm))
    bill = camara.call("GET", "/simulators/camara/_charges", params={"msisdn": msisdn})

    for pair in outcomes:
        assert sorted(answer.status for answer in pair) == [202, 409], pair
        assert len({answer.process for answer in pair}) == 2, pair  # one request on each of two workers
    assert bill.body["charges"] == payments


def test_a_reset_through_one_worker_clears_the_carrier_on_every_worker(camara: Carrier) -> None:
    token = camara.token()
    msisdn = "+447700900789"
    _prepare(camara, token, msisdn)
    camara.settings(callback_max_attempts=2, pin_length=8, latency_ms=OVERLAP_MS)

    reset = camara.call("POST", "/simulators/camara/_reset")
    # These answer at once: rounds of calls sent together reach every worker all the same.
    refused = camara.on_every_worker(lambda: camara.call("GET", PAYMENTS, token=token), rounds=30)
    settings = camara.on_every_worker(lambda: camara.call("GET", "/simulators/camara/_settings"), rounds=30)
    inboxes = camara.on_every_worker(
        lambda: camara.call("GET", "/simulators/camara/_sms", params={"msisdn": msisdn}), rounds=30
    )

    assert reset.status == 200
    assert {answer.status for answer in refused} == {401}
    assert {
        (answer.body["callback_max_attempts"], answer.body["pin_length"], answer.body["latency_ms"])
        for answer in settings
    } == {(5, 6, 0)}
    assert {len(answer.body["messages"]) for answer in inboxes} == {0}
