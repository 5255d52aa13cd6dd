"""The admin site, on django-unfold: staff must pass a TOTP second factor when STAFF_2FA is on."""

import hashlib
from typing import Any

from django.conf import settings
from django.contrib.admin import AdminSite
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse
from django.urls import URLPattern, path
from django_otp.admin import OTPAdminAuthenticationForm, OTPAdminSite
from unfold.forms import AuthenticationForm
from unfold.sites import UnfoldAdminSite
from unfold.widgets import BASE_INPUT_CLASSES

from playpay.admin_history import configuration_changes_view


class OTPAuthenticationForm(OTPAdminAuthenticationForm):  # type: ignore[misc]  # django-otp is untyped
    """django-otp's admin sign-in (password, then the authenticator's token) in unfold's inputs."""

    def __init__(self, request: HttpRequest | None = None, *args: Any, **kwargs: Any) -> None:
        super().__init__(request, *args, **kwargs)
        self.fields["username"].widget.attrs["autofocus"] = ""
        for name in ("username", "password", "otp_device", "otp_token"):
            self.fields[name].widget.attrs["class"] = " ".join(BASE_INPUT_CLASSES)
        self.fields["otp_token"].label = "Authenticator code"
        self.fields["otp_token"].widget.attrs.update(autocomplete="one-time-code", inputmode="numeric")


class PlayPayAdminSite(UnfoldAdminSite, OTPAdminSite):  # type: ignore[misc]  # django-otp is untyped
    """Decides per request, so that the setting can be changed without reloading URLs.

    The sign-in page is unfold's, with the token field only when the second factor is on (django-otp's own
    template labels a token field that the password-only form does not have)."""

    site_header = "PlayPay back office"
    site_title = "PlayPay"
    login_template = "admin/login.html"

    def extra_urls(self) -> list[URLPattern]:
        """unfold's hook for the site's own pages."""
        return [
            path(
                "configuration-changes/",
                self.admin_view(configuration_changes_view),
                name="configuration_changes",
            )
        ]

    def has_permission(self, request: HttpRequest) -> bool:
        if settings.STAFF_2FA:
            return bool(super().has_permission(request))
        return AdminSite.has_permission(self, request)

    def search(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        """The command palette, always answered from what is there now: unfold keeps a user's results for five
        minutes under the lower-cased term, but the payments' search is case-sensitive (user_refs, carrier
        references, idempotency keys) and a payment's status moves, so that entry is dropped first."""
        term = request.GET.get("s")
        if term:
            kept = f"{request.user.pk}_{term.lower()}".encode()
            cache.delete(f"unfold_search_{hashlib.sha256(kept).hexdigest()}")
        response: HttpResponse = super().search(request, extra_context)
        return response

    def login(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        self.login_form = OTPAuthenticationForm if settings.STAFF_2FA else AuthenticationForm
        response: HttpResponse = super().login(request, extra_context)
        return response
