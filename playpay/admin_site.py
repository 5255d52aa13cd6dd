"""The admin site: staff must pass a TOTP second factor when STAFF_2FA is on."""

from typing import Any

from django.conf import settings
from django.contrib.admin import AdminSite
from django.contrib.admin.forms import AdminAuthenticationForm
from django.http import HttpRequest, HttpResponse
from django_otp.admin import OTPAdminAuthenticationForm, OTPAdminSite


class PlayPayAdminSite(OTPAdminSite):  # type: ignore[misc]  # django-otp is untyped
    """Decides per request, so that the setting can be changed without reloading URLs."""

    site_header = "PlayPay back office"
    site_title = "PlayPay"

    def has_permission(self, request: HttpRequest) -> bool:
        if settings.STAFF_2FA:
            return bool(super().has_permission(request))
        return AdminSite.has_permission(self, request)

    def login(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        self.login_form = OTPAdminAuthenticationForm if settings.STAFF_2FA else AdminAuthenticationForm
        response: HttpResponse = super().login(request, extra_context)
        return response
