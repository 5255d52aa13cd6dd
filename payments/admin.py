from typing import Any

from django.contrib import admin, messages
from django.db import models
from django.http import HttpRequest

from payments.models import (
    ApiKey,
    App,
    CarrierNotification,
    IdempotencyRecord,
    OutboxMessage,
    Payment,
    PaymentStatusChange,
    WebhookAttempt,
    WebhookDelivery,
)
from payments.services import webhooks
from payments.services.apps import issue_api_key, revoke_api_key
from playpay.admin_base import ReadOnlyInline, RecordAdmin


class ApiKeyInline(ReadOnlyInline):
    model = ApiKey
    fields = ["prefix", "label", "created_at", "revoked_at"]


@admin.register(App)
class AppAdmin(admin.ModelAdmin[App]):
    list_display = ["name", "public_id", "is_active", "notification_url", "rate_limit_per_minute", "created_at"]
    list_filter = ["is_active"]
    search_fields = ["name", "public_id"]
    readonly_fields = ["public_id", "created_at"]
    inlines = [ApiKeyInline]
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}
    actions = ["issue_key", "rotate_webhook_secret"]

    def save_model(self, request: HttpRequest, obj: App, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        if not change:
            self._show_new_key(request, obj)

    @admin.action(description="Issue a new API key (shown once)", permissions=["change"])
    def issue_key(self, request: HttpRequest, queryset: Any) -> None:
        for app in queryset:
            self._show_new_key(request, app)

    def _show_once(self, request: HttpRequest, what: str, app: App, value: str) -> None:
        self.message_user(
            request,
            f"New {what} for {app.name} — copy it now, it will not be shown again: {value}",
            level=messages.WARNING,
        )

    @admin.action(
        description="Rotate the webhook secret (new one shown once; old one valid 24 h)", permissions=["change"]
    )
    def rotate_webhook_secret(self, request: HttpRequest, queryset: Any) -> None:
        for app in queryset:
            self._show_once(request, "webhook secret", app, webhooks.new_secret(app=app))

    def _show_new_key(self, request: HttpRequest, app: App) -> None:
        issued = issue_api_key(app=app, label=f"issued by {request.user}")
        self._show_once(request, "API key", app, issued.raw_key)


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin[ApiKey]):
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
        for api_key in queryset:
            revoke_api_key(api_key=api_key)
        self.message_user(request, f"{queryset.count()} key(s) revoked.")


class StatusChangeInline(ReadOnlyInline):
    model = PaymentStatusChange
    fields = ["created_at", "from_status", "to_status", "actor", "reason"]


@admin.register(Payment)
class PaymentAdmin(RecordAdmin):
    list_display = ["public_id", "created_at", "app", "carrier", "amount_minor", "currency", "status", "flow"]
    list_filter = ["status", "flow", "carrier__country", "app"]
    search_fields = ["=public_id", "=msisdn", "=user_ref", "=carrier_reference", "=idempotency_key"]
    list_select_related = ["app", "carrier"]
    date_hierarchy = "created_at"
    inlines = [StatusChangeInline]

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(IdempotencyRecord)
class IdempotencyRecordAdmin(RecordAdmin):
    list_display = ["key", "app", "state", "response_status", "created_at"]
    list_filter = ["state"]
    search_fields = ["=key", "=resource_id"]
    list_select_related = ["app"]


class WebhookAttemptInline(ReadOnlyInline):
    model = WebhookAttempt
    fields = ["attempted_at", "status_code", "error", "duration_ms"]


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(RecordAdmin):
    list_display = ["message_id", "app", "event_type", "status", "attempts", "last_status_code", "next_attempt_at"]
    list_filter = ["status", "event_type", "app"]
    search_fields = ["=message_id", "=payment__public_id"]
    list_select_related = ["app"]
    inlines = [WebhookAttemptInline]
    actions = ["replay"]

    def has_replay_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm("payments.change_webhookdelivery"))

    @admin.action(description="Send again now (same webhook-id)", permissions=["replay"])
    def replay(self, request: HttpRequest, queryset: Any) -> None:
        for delivery in queryset:
            webhooks.replay(delivery=delivery)
        self.message_user(request, f"{queryset.count()} notification(s) queued again.")


@admin.register(CarrierNotification)
class CarrierNotificationAdmin(RecordAdmin):
    list_display = ["received_at", "carrier", "notification_id", "kind", "outcome", "raw_code", "result"]
    list_filter = ["kind", "outcome", "carrier"]
    search_fields = ["=notification_id", "=carrier_reference"]
    list_select_related = ["carrier"]


@admin.register(OutboxMessage)
class OutboxMessageAdmin(RecordAdmin):
    list_display = ["id", "task", "queue", "created_at", "sent_at"]
    list_filter = ["queue", "task"]
