"""`Authorization: Api-Key <key>` authentication; the authenticated principal is the App."""

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions, permissions
from rest_framework.request import Request

from playpay.logging import bind
from tenants.models import ApiKey, App
from tenants.services import authenticate_api_key

KEYWORD = "Api-Key"


class ApiKeyAuthentication(authentication.BaseAuthentication):
    def authenticate(self, request: Request) -> tuple[App, ApiKey] | None:
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header:
            return None
        scheme, _, raw_key = header.partition(" ")
        if scheme != KEYWORD or not raw_key.strip():
            raise exceptions.AuthenticationFailed(f"Use the header `Authorization: {KEYWORD} <key>`.")
        api_key = authenticate_api_key(raw_key.strip())
        if api_key is None:
            raise exceptions.AuthenticationFailed("The API key is not valid or has been revoked.")
        request._request.META["playpay.app"] = api_key.app.name  # for the journal's record of the request
        bind(app=api_key.app.name)
        return api_key.app, api_key

    def authenticate_header(self, request: Request) -> str:
        return KEYWORD


def request_app(request: Request) -> App | None:
    """The App a request is authenticated as, if any."""
    principal: object = request.user
    return principal if isinstance(principal, App) else None


class IsApp(permissions.BasePermission):
    message = f"Authenticate with `Authorization: {KEYWORD} <key>`."

    def has_permission(self, request: Request, view: Any) -> bool:
        return request_app(request) is not None


class ApiKeyScheme(OpenApiAuthenticationExtension):  # type: ignore[no-untyped-call]
    """The `ApiKey` security scheme; every operation it secures documents 401 and 429 (playpay.api.schema)."""

    target_class = "tenants.auth.ApiKeyAuthentication"
    name = "ApiKey"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": f"`{KEYWORD} <key>`; keys are issued in the admin or by `manage.py create_app`.",
        }
