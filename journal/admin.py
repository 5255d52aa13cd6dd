from typing import Any

from django.contrib import admin
from django.contrib.auth.admin import GroupAdmin as BaseGroupAdmin
from django.contrib.auth.models import Group
from django.http import HttpRequest

from journal.audit_admin import AuditedAdmin
from journal.models import StaffAction
from playpay.admin_base import RecordAdmin


@admin.register(StaffAction)
class StaffActionAdmin(RecordAdmin):
    list_display = ["created_at", "user", "action", "object_type", "object", "reason", "outcome"]
    list_filter = ["action", "object_type"]
    search_fields = ["=object_id", "object_repr", "user__username", "reason"]
    list_select_related = ["user"]

    @admin.display(description="object", ordering="object_repr")
    def object(self, action: StaffAction) -> str:
        # The name it had then, and its id (a payment's public id, a carrier's number) to find it by.
        return f"{action.object_repr} ({action.object_id})" if action.object_repr else action.object_id

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


# Roles: which staff may do what. A change of a role's permissions needs a reason and keeps a history.
admin.site.unregister(Group)


@admin.register(Group)
class GroupAdmin(BaseGroupAdmin, AuditedAdmin):
    pass
