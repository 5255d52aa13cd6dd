from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from journal.audit_admin import AuditedAdmin
from playpay.admin_base import ReadOnlyInline
from tenants.models import ApiKey
from tenants.services import revoke_api_key


class ApiKeyInline(ReadOnlyInline):
    model = ApiKey
    fields = ["prefix", "label", "created_at", "revoked_at"]


@admin.register(ApiKey)
class ApiKeyAdmin(AuditedAdmin):
    list_display = ["prefix", "app", "label", "created_at", "revoked_at"]
    list_filter = ["revoked_at"]
    search_fields = ["prefix", "app__name"]
    list_select_related = ["app"]
    readonly_fields = ["app", "prefix", "label", "created_at", "revoked_at"]
    actions = ["revoke"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # keys are issued from the app page so that the key can be shown once

    @admin.action(description="Revoke selected keys", permissions=["change"])
    def revoke(self, request: HttpRequest, queryset: Any) -> None:
        reason = self.action_reason(request)
        if reason is None:
            return
        for api_key in queryset:
            revoke_api_key(api_key=api_key, reason=reason)
            self.record(request, api_key, "revoke", reason, "revoked")
        self.message_user(request, f"{queryset.count()} key(s) revoked.")
