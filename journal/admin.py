from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from journal.models import StaffAction
from playpay.admin_base import RecordAdmin


@admin.register(StaffAction)
class StaffActionAdmin(RecordAdmin):
    list_display = ["created_at", "user", "action", "object_type", "object_id", "reason", "outcome"]
    list_filter = ["action", "object_type"]
    search_fields = ["=object_id", "user__username", "reason"]
    list_select_related = ["user"]

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
