"""Staff sign-in: TOTP second factor (django-otp) and lockout after repeated failures (django-axes)."""

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django_otp.oath import totp
from django_otp.plugins.otp_totp.models import TOTPDevice

pytestmark = pytest.mark.django_db
LOGIN = "/admin/login/?next=/admin/"
PASSWORD = "a-Str0ng-staff-password"


@pytest.fixture
def ops() -> User:
    return User.objects.create_user("ops", "ops@example.com", PASSWORD, is_staff=True, is_superuser=True)


def token_for(device: TOTPDevice) -> str:
    return f"{totp(device.bin_key, device.step, device.t0, device.digits, device.drift):06d}"


def test_with_the_second_factor_on_a_password_alone_does_not_open_the_admin(settings: Any, ops: User) -> None:
    settings.STAFF_2FA = True
    device = TOTPDevice.objects.create(user=ops, name="phone", confirmed=True)
    client = Client()
    response = client.post(LOGIN, {"username": "ops", "password": PASSWORD, "otp_device": device.persistent_id})
    assert response.status_code == 200  # the form again, asking for the token
    assert client.get("/admin/").status_code == 302
    response = client.post(
        LOGIN,
        {"username": "ops", "password": PASSWORD, "otp_device": device.persistent_id, "otp_token": token_for(device)},
    )
    assert response.status_code == 302
    assert client.get("/admin/").status_code == 200


def test_repeated_failed_logins_lock_the_account_even_for_the_right_password(settings: Any, ops: User) -> None:
    settings.AXES_FAILURE_LIMIT = 3
    client = Client()
    for _ in range(3):
        client.post(LOGIN, {"username": "ops", "password": "wrong"})
    response = client.post(LOGIN, {"username": "ops", "password": PASSWORD})
    assert response.status_code == 429
    assert client.get("/admin/").status_code == 302


def test_enroll_totp_prints_an_authenticator_url(ops: User) -> None:
    import io

    from django.core.management import call_command

    out = io.StringIO()
    call_command("enroll_totp", "ops", stdout=out)
    assert out.getvalue().strip().splitlines()[-1].startswith("otpauth://totp/")
    assert TOTPDevice.objects.filter(user=ops, confirmed=True).count() == 1
