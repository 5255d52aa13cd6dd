"""manage.py in a fresh process: settings are fixed per process, so each deployment shape gets its own."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRODUCTION_ENV = {
    "PLAYPAY_ENV": "production",
    "DEBUG": "false",
    "SECRET_KEY": "a-long-random-production-secret-key-0123456789-abcdefghijklmnop",
    "CARRIER_CREDENTIALS_KEY": "another-long-random-key-for-secrets-at-rest-0123456789",
    "ALLOWED_HOSTS": "pay.example.com",
    "SECURE_SSL_REDIRECT": "true",
    "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/postgres",
}


def django(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`manage.py args` with only `env` set (not this suite's SANDBOX=true), its output captured."""
    base = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=base | env, capture_output=True, text=True, timeout=120
    )
