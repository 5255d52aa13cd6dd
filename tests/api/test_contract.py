"""The API answers as its OpenAPI schema says: schemathesis, every check, against a live server.

A bounded, reproducible run (tests/api/schemathesis.toml): deterministic generation, a few hundred
cases over every operation, the stateful phase included. It fails on any 5xx, a status or a body the
schema does not document, a valid request refused with an undocumented status, and an invalid request
accepted.
"""

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Shop

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
RUN_TIMEOUT_SECONDS = 300


def schemathesis_command() -> str:
    return shutil.which("schemathesis") or str(Path(sys.executable).with_name("schemathesis"))


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_the_api_answers_as_its_schema_says(live_server: Any, make_shop: Callable[..., Shop]) -> None:
    shop = make_shop()
    command = [
        schemathesis_command(),
        "--config-file",
        str(HERE / "schemathesis.toml"),
        "run",
        f"{live_server.url}/api/schema/?format=json",
        "--url",
        live_server.url,
        "--header",
        f"Authorization: Api-Key {shop.key}",
        "--checks",
        "all",
        "--no-color",
    ]
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=RUN_TIMEOUT_SECONDS, check=False
    )
    assert result.returncode == 0, result.stdout[-20_000:] + result.stderr[-5_000:]
    print(result.stdout[-2_000:])  # the summary: phases, cases generated, time (shown with -s or -rP)
