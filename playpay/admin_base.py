"""Admin building blocks shared by the apps."""

from typing import Any

from django.contrib import admin
from django.http import HttpRequest


class ReadOnlyInline(admin.TabularInline):  # type: ignore[type-arg]
    """An inline list of records the system writes: shown, never edited, added or deleted here."""

    extra = 0
    can_delete = False

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return self.fields or []

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class RecordAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Records the system writes (payments, callbacks, deliveries…): searchable and viewable only.

    State changes go through the services (admin actions), never through a form.
    """

    show_full_result_count = False  # no COUNT(*) over big tables

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return [field.name for field in self.model._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
