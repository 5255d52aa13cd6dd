"""Production names its own secrets, and the key for secrets at rest can be rotated without losing them."""

import pytest

from playpay.crypto import decrypt_credentials, encrypt_credentials, reencrypt
from tests.processes import PRODUCTION_ENV, django


@pytest.mark.parametrize("name", ["SECRET_KEY", "CARRIER_CREDENTIALS_KEY"])
def test_production_refuses_to_start_without_its_secret(name: str, tmp_path) -> None:
    env = {key: value for key, value in PRODUCTION_ENV.items() if key != name} | {"PLAYPAY_VAR_DIR": str(tmp_path)}
    result = django(["check"], env)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert f"{name} must be set in a production deployment (PLAYPAY_ENV=production)" in result.stderr


def test_production_starts_with_both_secrets_and_development_without(tmp_path) -> None:
    assert django(["check"], PRODUCTION_ENV | {"PLAYPAY_VAR_DIR": str(tmp_path)}).returncode == 0
    assert django(["check"], {"PLAYPAY_VAR_DIR": str(tmp_path)}).returncode == 0


def test_values_encrypted_under_an_older_key_still_decrypt(settings) -> None:
    settings.CARRIER_CREDENTIALS_KEY = "old-key"
    token = encrypt_credentials({"password": "s3cret"})
    settings.CARRIER_CREDENTIALS_KEY = "new-key, old-key"
    assert decrypt_credentials(token) == {"password": "s3cret"}
    fresh = encrypt_credentials({"password": "s3cret"})
    settings.CARRIER_CREDENTIALS_KEY = "new-key"
    assert decrypt_credentials(fresh) == {"password": "s3cret"}  # new values use the newest key
    with pytest.raises(ValueError, match="cannot be decrypted"):
        decrypt_credentials(token)


def test_reencrypt_moves_a_value_to_the_newest_key(settings) -> None:
    settings.CARRIER_CREDENTIALS_KEY = "old-key"
    token = encrypt_credentials({"password": "s3cret"})
    settings.CARRIER_CREDENTIALS_KEY = "new-key,old-key"
    fresh = reencrypt(token)
    settings.CARRIER_CREDENTIALS_KEY = "new-key"
    assert decrypt_credentials(fresh) == {"password": "s3cret"}
    assert reencrypt("") == ""


def test_the_key_derived_from_secret_key_stays_readable_as_a_listed_key(settings) -> None:
    settings.CARRIER_CREDENTIALS_KEY = ""
    token = encrypt_credentials({"password": "s3cret"})  # under the key derived from SECRET_KEY
    settings.CARRIER_CREDENTIALS_KEY = f"new-key,{settings.SECRET_KEY}"
    assert decrypt_credentials(token) == {"password": "s3cret"}
