"""Admin building blocks shared by the apps, on django-unfold: every ModelAdmin and inline derives from here.

unfold ships no type information; the type checker sees Django's own (generic) classes, which unfold's
subclass one for one, and the running admin gets unfold's.
"""

from typing import TYPE_CHECKING, Any

from django.http import HttpRequest

if TYPE_CHECKING:
    from django.contrib.admin import ModelAdmin, StackedInline, TabularInline
else:
    from unfold.admin import ModelAdmin, StackedInline, TabularInline

__all__ = ["ModelAdmin", "ReadOnlyInline", "RecordAdmin", "StackedInline", "TabularInline"]


class ReadOnlyInline(TabularInline):  # type: ignore[type-arg]
    """An inline list of records the system writes: shown, never edited, added or deleted here."""

    extra = 0
    can_delete = False

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return self.fields or []

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class RecordAdmin(ModelAdmin):  # type: ignore[type-arg]
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
