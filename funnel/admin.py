from django.contrib import admin

from funnel.models import FunnelDefinition, FunnelEvent, Journey
from playpay.admin_base import RecordAdmin


@admin.register(Journey)
class JourneyAdmin(RecordAdmin):
    list_display = [
        "journey_id",
        "app",
        "user_ref",
        "started_at",
        "carrier",
        "country",
        "price_point",
        "flow",
        "outcome",
    ]
    list_filter = ["outcome", "flow", "country", "app"]
    search_fields = ["=journey_id", "=user_ref"]
    list_select_related = ["app"]
    date_hierarchy = "started_at"


@admin.register(FunnelEvent)
class FunnelEventAdmin(RecordAdmin):
    list_display = ["occurred_at", "app", "journey_id", "step", "source", "error_code", "received_at"]
    list_filter = ["source", "step", "app"]
    search_fields = ["=journey_id", "=event_id"]
    list_select_related = ["app"]
    date_hierarchy = "occurred_at"


@admin.register(FunnelDefinition)
class FunnelDefinitionAdmin(admin.ModelAdmin[FunnelDefinition]):
    list_display = ["name", "app", "steps", "window_seconds", "exclusion_step"]
    search_fields = ["name"]
