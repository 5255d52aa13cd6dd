import contextlib
from datetime import UTC
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db import models
from django.db.models import Q
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.dateparse import parse_datetime
from django.utils.html import format_html
from unfold.contrib.filters.admin import (
    AutocompleteSelectFilter,
    ChoicesDropdownFilter,
    RangeDateTimeFilter,
    RangeNumericListFilter,
    RelatedDropdownFilter,
)
from unfold.dataclasses import SearchResult
from unfold.decorators import display

from carriers.admin import ConfiguredCarrierFilter
from carriers.msisdn import msisdn_readings, normalize_msisdn
from journal.audit_admin import REASON, AuditedAdmin
from journal.selectors import render as journal_render
from journal.selectors import timeline as journal_timeline
from payments.models import (
    CarrierNotification,
    IdempotencyRecord,
    LedgerEntry,
    LedgerLine,
    OutboxMessage,
    Payment,
    PaymentStatus,
    PlayerBlock,
    Refund,
    RefundApproval,
    Reversal,
    WebhookAttempt,
    WebhookDelivery,
)
from payments.player_sections import player_sections
from payments.selectors import (
    Player,
    active_regions,
    amount_bound,
    payment_timeline,
    player_named,
    player_summary,
    players_named,
    search_payments,
)
from payments.services import webhooks
from payments.services.carrier_flow import is_uuid
from payments.services.players import block_player, unblock_player
from payments.services.refunds import may_be_refunded, reversal_refusal
from payments.services.staff import (
    ApprovalRefused,
    RefundReason,
    approve_refund,
    ask_refunds,
    can_query_carrier,
    preview_operation,
    query_carrier_status,
    refund_reason,
    reject_refund,
    resend_payment_webhook,
    reverse_payments,
)
from playpay.admin_base import MoneyField, ReadOnlyInline, RecordAdmin, money_column, recent_values_filter
from playpay.errors import DomainError
from playpay.money import format_money
from playpay.redaction import mask_msisdn
from playpay.times import utc_text
from tenants.admin import ApiKeyInline
from tenants.models import App
from tenants.services import issue_api_key


# The App's page is here, not in tenants: its actions issue API keys and webhook secrets (payments).
@admin.register(App)
class AppAdmin(AuditedAdmin):
    list_display = ["name", "public_id", "is_active", "webhook_url", "rate_limit_per_minute", "created_at"]
    list_filter = ["is_active"]
    search_fields = ["name", "public_id"]
    readonly_fields = ["public_id", "created_at"]
    inlines = [ApiKeyInline]
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}
    actions = ["issue_key", "rotate_webhook_secret"]

    def save_model(self, request: HttpRequest, obj: App, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        if not change:
            self._show_new_key(request, obj, form.cleaned_data[REASON])

    @admin.action(description="Issue a new API key (shown once)", permissions=["change"])
    def issue_key(self, request: HttpRequest, queryset: Any) -> None:
        reason = self.action_reason(request)
        if reason is None:
            return
        for app in queryset:
            self._show_new_key(request, app, reason)

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

    def _show_new_key(self, request: HttpRequest, app: App, reason: str) -> None:
        issued = issue_api_key(app=app, label=f"issued by {request.user}", reason=reason)
        self.record(request, issued.api_key, "issue", reason, f"issued for {app}")
        self._show_once(request, "API key", app, issued.raw_key)


def also_by_payment_public_id(queryset: Any, found: Any, term: str, *, payment: str) -> Any:
    """`found`, and the rows of `queryset` whose payment (the field `payment`) has the public id `term`, looked
    up by `Payment.objects.with_public_id` (its months only); `found` alone when the term is no UUID."""
    term = term.strip()
    if not is_uuid(term):
        return found
    return found | queryset.filter(**{f"{payment}__in": Payment.objects.with_public_id(term).values("pk")})


# Where the carrier has not stated an outcome yet: since when, the next check, the checks made.
OUTCOME_FIELDS = ["outcome_unknown_since", "next_resolve_at", "resolve_attempts"]


class OutcomeUnknownFilter(admin.SimpleListFilter):
    title = "carrier outcome"
    parameter_name = "outcome"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("unknown", "unknown"), ("alerted", "unknown too long (alerted)")]

    def queryset(self, request: HttpRequest, queryset: Any) -> Any:
        if self.value() == "unknown":
            return queryset.filter(outcome_unknown_since__isnull=False)
        if self.value() == "alerted":
            return queryset.filter(outcome_unknown_since__isnull=False, outcome_alerted_at__isnull=False)
        return queryset


class BlockForm(forms.Form):
    reason = forms.CharField(max_length=255)
    app = forms.ModelChoiceField(queryset=App.objects.all(), required=False)
    unblock = forms.IntegerField(required=False, min_value=1)


def _player_from(request: HttpRequest) -> Player | None:
    """The player a page's query names: `msisdn` (any format), or `app` (its id) and `user_ref`."""
    raw = request.GET.get("msisdn", "").strip()
    if raw:
        readings = msisdn_readings(raw, regions=active_regions())
        return Player(msisdn=readings[0]) if readings else None
    user_ref = request.GET.get("user_ref", "").strip()
    app = App.objects.filter(pk=request.GET.get("app", "")).first() if request.GET.get("app", "").isdigit() else None
    if app is None or not user_ref:
        return None
    return Player(app=app, user_ref=user_ref)


class ReasonForm(forms.Form):
    reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 2, "cols": 60}),
        max_length=200,
        help_text="Required; kept with the action.",
    )


class RefundForm(forms.Form):
    """A refund as staff type it: an amount in major units of the payment's currency, a reason code and a note."""

    amount = MoneyField(required=False, label="Amount")
    reason_code = forms.ChoiceField(choices=RefundReason.choices, label="Reason")
    note = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 2, "cols": 60}),
        max_length=200,
        label="Note",
        help_text="Required; kept with the refund (a ticket number, what the player said).",
    )

    def __init__(self, *args: Any, payments: list[Payment], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        amount = self.fields["amount"]
        assert isinstance(amount, MoneyField)
        self.left: int | None = None  # what is left to refund, for one payment
        if len(payments) == 1:
            payment = payments[0]
            amount.currency = payment.currency
            left = format_money(payment.amount_minor - payment.refunded_minor, payment.currency)
            amount.help_text = (
                f"In {payment.currency}, at most {left} (all that is left). Empty refunds all that is left."
            )
            self.left = payment.amount_minor - payment.refunded_minor
        else:
            amount.disabled = True
            amount.help_text = "Each payment is refunded in full (all that is left of it)."

    def clean_amount(self) -> int | None:
        amount: int | None = self.cleaned_data.get("amount")
        currency = self.fields["amount"].currency  # type: ignore[attr-defined]
        if amount is not None and self.left is not None and amount > self.left:
            raise forms.ValidationError(f"At most {format_money(self.left, currency)} is left to refund.")
        return amount

    @property
    def reason(self) -> str:
        return refund_reason(code=self.cleaned_data["reason_code"], note=self.cleaned_data["note"])


def staff_user(request: HttpRequest) -> AbstractBaseUser:
    user = request.user
    assert isinstance(user, AbstractBaseUser)  # the admin requires a signed-in user
    return user


def shows_full_msisdn(request: HttpRequest) -> bool:
    """Who may read a player's whole number: those whose role has `payments.view_full_msisdn` (operations)."""
    return bool(request.user.has_perm("payments.view_full_msisdn"))


def payment_header(payment: Payment, *, full_msisdn: bool) -> dict[str, Any]:
    """What the payment page shows first: amount, status, player, carrier."""
    return {
        "amount": format_money(payment.amount_minor, payment.currency),
        "refunded": format_money(payment.refunded_minor, payment.currency) if payment.refunded_minor else "",
        "status": payment.get_status_display(),
        "status_value": payment.status,
        "msisdn": payment.msisdn if full_msisdn else mask_msisdn(payment.msisdn),
        "user_ref": payment.user_ref,
        "app": payment.app.name,
        "carrier": payment.carrier,
        "flow": payment.flow,
        "created": utc_text(payment.created_at),
    }


class CarrierFilter(AutocompleteSelectFilter):  # type: ignore[misc]
    title = "carrier"


class CountryFilter(AutocompleteSelectFilter):  # type: ignore[misc]
    title = "country"


class UtcRangeDateTimeFilter(RangeDateTimeFilter):  # type: ignore[misc]
    """A date-time range read in UTC, as the list shows times; a day without a time is the whole day."""

    def queryset(self, request: HttpRequest, queryset: Any) -> Any:
        bounds = {}
        for side, lookup, whole_day in (("from", "gte", "00:00:00"), ("to", "lte", "23:59:59.999999")):
            day = self.used_parameters.get(f"{self.parameter_name}_{side}_0")
            if not day:
                continue
            clock = self.used_parameters.get(f"{self.parameter_name}_{side}_1") or whole_day
            try:
                moment = parse_datetime(f"{day} {clock}")
            except ValueError:
                moment = None
            if moment is None:
                raise IncorrectLookupParameters(f"{day} {clock} is no date and time")
            bounds[f"{self.parameter_name}__{lookup}"] = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
        return queryset.filter(**bounds)


class AmountFilter(RangeNumericListFilter):  # type: ignore[misc]
    """Amount range in major units (9.99), each payment compared in its own currency's minor units."""

    title = "amount (major units, e.g. 9.99)"
    parameter_name = "amount"

    def queryset(self, request: HttpRequest, queryset: Any) -> Any:
        wanted = Q()
        for bound, lookup in (("from", "gte"), ("to", "lte")):
            raw = self.used_parameters.get(f"{self.parameter_name}_{bound}")
            if raw in (None, ""):
                continue
            try:
                major = Decimal(str(raw).replace(",", "."))
            except ArithmeticError:
                return queryset.none()
            if not major.is_finite():
                return queryset.none()
            wanted &= amount_bound(major, lookup=lookup)
        return queryset.filter(wanted)


STATUS_LABELS = {
    PaymentStatus.SUCCEEDED: "success",
    PaymentStatus.FAILED: "danger",
    PaymentStatus.EXPIRED: "danger",
    PaymentStatus.REVERSED: "warning",
    PaymentStatus.REFUNDED: "warning",
    PaymentStatus.PARTIALLY_REFUNDED: "warning",
    PaymentStatus.CHARGING: "info",
    PaymentStatus.PIN_SENT: "info",
    PaymentStatus.PIN_VERIFIED: "info",
}


def shown_msisdn(request: HttpRequest, msisdn: str) -> str:
    """A player's number as this staff member may read it (`shows_full_msisdn`), else masked."""
    return msisdn if shows_full_msisdn(request) else mask_msisdn(msisdn)


def player_url(player: Player) -> str:
    query = (
        {"msisdn": player.msisdn}
        if player.msisdn
        else {"app": player.app.pk if player.app else "", "user_ref": player.user_ref}
    )
    return reverse("admin:payments_payment_player") + "?" + urlencode(query)


# The palette shows the newest of the payments a term names; the list (its search box) shows them all.
PALETTE_PAYMENTS = 10


def palette_results(request: HttpRequest, lowered_term: str) -> list[SearchResult]:
    """The command palette's (Ctrl+K) answers from payments, as the list's search box reads a term: the player it
    names (a number in any format, or a user_ref: one per app), whose page it opens, then the newest payments it
    names. unfold's COMMAND["search_callback"]; unfold passes the term lower-cased, so it is read as typed from
    the request (user_refs, carrier references and idempotency keys are case-sensitive)."""
    if not request.user.has_perm("payments.view_payment"):
        return []
    term = request.GET.get("s", "").strip() or lowered_term.strip()
    found = search_payments(term=term)
    players = [
        SearchResult(
            title=f"Player {shown_msisdn(request, player.msisdn)}"
            if player.msisdn
            else f"Player {player.user_ref} of {player.app}",
            description="player page: payments, lifetime spend, timeline",
            link=player_url(player),
            icon="person",
        )
        for player in players_named(found, term)
    ]
    payments = [
        SearchResult(
            title=str(payment.public_id),
            description=(
                f"payment · {format_money(payment.amount_minor, payment.currency)} · "
                f"{payment.get_status_display()} · {utc_text(payment.created_at)}"
            ),
            link=reverse("admin:payments_payment_change", args=[payment.pk]),
            icon="receipt_long",
        )
        for payment in found.payments.order_by("-id")[:PALETTE_PAYMENTS]
    ]
    return players + payments


class PlayerRecordAdmin(RecordAdmin):
    """Records of a player's (payments, subscriptions) with their `msisdn`: the number in full for whom their role
    allows (`shows_full_msisdn`), masked for the others, in the list (put the column `number` in list_display) and
    in the raw fields."""

    @admin.display(description="MSISDN")
    def number(self, record: Any) -> str:
        return mask_msisdn(record.msisdn)

    @admin.display(description="MSISDN")
    def masked_msisdn(self, record: Any) -> str:
        return mask_msisdn(record.msisdn)

    def get_list_display(self, request: HttpRequest) -> Any:
        shown = super().get_list_display(request)
        if shows_full_msisdn(request):
            return ["msisdn" if name == "number" else name for name in shown]
        return shown

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        fields = super().get_readonly_fields(request, obj)
        if not shows_full_msisdn(request):
            fields = ["masked_msisdn" if name == "msisdn" else name for name in fields]
        return fields


@admin.register(Payment)
class PaymentAdmin(PlayerRecordAdmin):
    list_display = [
        "public_id",
        "created",
        "amount",
        "status_badge",
        "number",
        "user_ref",
        "carrier",
        "refunded",
        "app",
    ]
    list_display_links = ["public_id"]
    list_filter = [
        ("status", ChoicesDropdownFilter),
        ("carrier", CarrierFilter),
        ("carrier__country", CountryFilter),
        ("app", RelatedDropdownFilter),
        ("flow", ChoicesDropdownFilter),
        ("created_at", UtcRangeDateTimeFilter),
        AmountFilter,
        OutcomeUnknownFilter,
    ]
    list_filter_submit = True
    # One box: a public id or its first 8+ characters, a number in any format, a user_ref, a carrier reference
    # or an idempotency key (payments.selectors.search_payments); every reading uses an index.
    search_fields = ["public_id"]
    search_help_text = (
        "Payment id (or its first 8+ characters), phone number in any format, user_ref, carrier reference "
        "or idempotency key."
    )
    list_select_related = ["app", "carrier"]
    actions = ["refund", "reverse"]
    change_form_template = "admin/payments/payment/change_form.html"

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        # The story is told above (header and timeline); the row itself, folded, for whoever needs a field.
        return [("Raw fields", {"classes": ["collapse"], "fields": self.get_readonly_fields(request, obj)})]

    @admin.display(description="created (UTC)", ordering="created_at")
    def created(self, payment: Payment) -> str:
        return utc_text(payment.created_at)

    @admin.display(description="amount", ordering="amount_minor")
    def amount(self, payment: Payment) -> str:
        return format_money(payment.amount_minor, payment.currency)

    @admin.display(description="refunded")
    def refunded(self, payment: Payment) -> str:
        return format_money(payment.refunded_minor, payment.currency) if payment.refunded_minor else "—"

    @display(description="status", ordering="status", label=STATUS_LABELS)  # type: ignore[untyped-decorator]
    def status_badge(self, payment: Payment) -> str:
        return payment.status

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> Any:
        landing = self._landing(request)
        if landing is not None:
            return redirect(landing)
        return super().changelist_view(request, extra_context)

    def _landing(self, request: HttpRequest) -> str | None:
        """Where a search lands: the payment when exactly one matches, the player's page when the term names a
        player with several payments; None (the filtered list) otherwise, or when other filters are set."""
        term = request.GET.get("q", "").strip()
        if not term or set(request.GET) - {"q"} or request.method != "GET":
            return None
        found = search_payments(term=term)
        first_two = list(found.payments.values_list("pk", flat=True)[:2])
        if len(first_two) == 1:
            return reverse("admin:payments_payment_change", args=[first_two[0]])
        player = player_named(found, term) if first_two else None
        return player_url(player) if player is not None else None

    def get_search_results(self, request: HttpRequest, queryset: Any, search_term: str) -> tuple[Any, bool]:
        return search_payments(term=search_term, queryset=queryset).payments, False

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        # The PIN being checked, even encrypted, is for the carrier-queue task alone: not shown.
        return [name for name in super().get_readonly_fields(request, obj) if name != "pin_ciphertext"]

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_refund_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm("payments.refund_payment"))

    def has_reverse_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm("payments.reverse_payment"))

    def has_resend_webhook_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm("payments.change_webhookdelivery"))

    def page_actions(self, request: HttpRequest, payment: Payment) -> list[dict[str, str]]:
        """The buttons on the payment's page: those this person may use and this payment allows."""
        actions = []
        if self.has_refund_permission(request) and may_be_refunded(payment):
            actions.append({"name": "refund", "label": "Refund", "method": "get"})
        if self.has_reverse_permission(request) and reversal_refusal(payment) is None:
            actions.append({"name": "reverse", "label": "Reverse", "method": "get"})
        if self.has_refund_permission(request) and can_query_carrier(payment):
            actions.append({"name": "query_status", "label": "Query carrier status", "method": "post"})
        if self.has_resend_webhook_permission(request) and payment.app.webhook_url:
            actions.append({"name": "resend_webhook", "label": "Resend webhook", "method": "post"})
        for action in actions:
            action["url"] = reverse(f"admin:payments_payment_{action['name']}", args=[payment.pk])
        return actions

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> Any:
        payment = self._payment(request, object_id)
        if payment is not None:
            timeline = reverse("admin:payments_payment_timeline")
            player = f"{timeline}?{urlencode({'app': payment.app.name, 'user_ref': payment.user_ref})}"
            number = f"{timeline}?{urlencode({'msisdn': payment.msisdn})}" if shows_full_msisdn(request) else ""
            extra_context = {
                **(extra_context or {}),
                "header": payment_header(payment, full_msisdn=shows_full_msisdn(request)),
                "page_actions": self.page_actions(request, payment),
                "timeline": payment_timeline(payment),
                "player_url": player,
                "number_url": number,
            }
        return super().change_view(request, object_id, form_url, extra_context)

    def _payment(self, request: HttpRequest, object_id: str) -> Payment | None:
        if not object_id.isdigit():
            return None
        return self.get_queryset(request).select_related("app", "carrier").filter(pk=int(object_id)).first()

    def get_urls(self) -> list[Any]:
        view = self.admin_site.admin_view
        extra = [
            path("timeline/", view(self.timeline_view), name="payments_payment_timeline"),
            path("<int:pk>/refund/", view(self.refund_view), name="payments_payment_refund"),
            path("<int:pk>/reverse/", view(self.reverse_view), name="payments_payment_reverse"),
            path("<int:pk>/query-status/", view(self.query_status_view), name="payments_payment_query_status"),
            path("<int:pk>/resend-webhook/", view(self.resend_webhook_view), name="payments_payment_resend_webhook"),
            path("player/", view(self.player_view), name="payments_payment_player"),
        ]
        return extra + super().get_urls()

    def player_view(self, request: HttpRequest) -> HttpResponse:
        """A player (app + user_ref, or a number in any app): payments, lifetime figures, timeline, blocking."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        player = _player_from(request)
        if player is None:
            return redirect("admin:payments_payment_changelist")
        if request.method == "POST":
            self._block_or_unblock(request, player)
            return redirect(player_url(player))
        payments = player.payments().select_related("app", "carrier").order_by("-id")
        page = Paginator(payments, 50).get_page(request.GET.get("page"))
        summary = player_summary(player)
        if player.msisdn:
            documents = journal_timeline(msisdn=player.msisdn)
            block_apps = list(App.objects.filter(pk__in=player.payments().values("app")).order_by("name"))
        else:
            assert player.app is not None
            documents = journal_timeline(app=player.app.name, user_ref=player.user_ref)
            block_apps = [player.app]
        blocked_apps = {block.app_id for block in summary.blocks}
        context = {
            **self.admin_site.each_context(request),
            "title": f"Player {shown_msisdn(request, player.msisdn)}"
            if player.msisdn
            else f"Player {player.user_ref} of {player.app}",
            "opts": self.model._meta,
            "player": player,
            "summary": summary,
            "totals": [
                {
                    "currency": row.currency,
                    "charged": format_money(row.charged_minor, row.currency),
                    "refunded": format_money(row.refunded_minor, row.currency),
                    "reversed": format_money(row.reversed_minor, row.currency),
                    "spent": format_money(row.spent_minor, row.currency),
                }
                for row in summary.totals
            ],
            "page": page,
            "rows": [
                {
                    "payment": payment,
                    "created": utc_text(payment.created_at),
                    "amount": format_money(payment.amount_minor, payment.currency),
                    "msisdn": shown_msisdn(request, payment.msisdn),
                }
                for payment in page.object_list
            ],
            "sections": player_sections(request, player),
            "timeline": journal_render(documents),
            "timeline_count": len(documents),
            "block_apps": [app for app in block_apps if app.pk not in blocked_apps],
            "can_block": request.user.has_perm("payments.add_playerblock"),
            "can_unblock": request.user.has_perm("payments.delete_playerblock"),
            "list_url": reverse("admin:payments_payment_changelist")
            + "?"
            + urlencode({"q": player.msisdn or player.user_ref}),
        }
        return TemplateResponse(request, "admin/payments/payment/player.html", context)

    def _block_or_unblock(self, request: HttpRequest, player: Player) -> None:
        form = BlockForm(request.POST)
        if not form.is_valid():
            self.message_user(request, "A reason is required to block or unblock a player.", level=messages.ERROR)
            return
        user, reason = request.user, form.cleaned_data["reason"]
        assert isinstance(user, AbstractBaseUser)  # the admin requires a signed-in user
        try:
            if form.cleaned_data["unblock"]:
                if not request.user.has_perm("payments.delete_playerblock"):
                    raise PermissionDenied
                block = PlayerBlock.objects.select_related("app").get(pk=form.cleaned_data["unblock"])
                unblock_player(user=user, block=block, reason=reason)
                self.message_user(request, f"Unblocked for {block.app}.", level=messages.SUCCESS)
            else:
                if not request.user.has_perm("payments.add_playerblock"):
                    raise PermissionDenied
                app = form.cleaned_data["app"] or player.app
                if app is None:
                    self.message_user(request, "Choose the app to block the number for.", level=messages.ERROR)
                    return
                block_player(user=user, app=app, msisdn=player.msisdn, user_ref=player.user_ref, reason=reason)
                self.message_user(request, f"Blocked for {app}: its payments are refused.", level=messages.SUCCESS)
        except PlayerBlock.DoesNotExist:
            self.message_user(request, "That block was already lifted.", level=messages.WARNING)
        except DomainError as error:
            self.message_user(request, str(error), level=messages.ERROR)

    def timeline_view(self, request: HttpRequest) -> TemplateResponse:
        """Support's search of the journal by payment id, MSISDN, carrier reference or player."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        params = {
            name: request.GET.get(name, "").strip()
            for name in ("payment_id", "msisdn", "carrier_reference", "app", "user_ref")
        }
        msisdn = params["msisdn"]
        if msisdn:
            with contextlib.suppress(DomainError):  # searched as typed when it does not parse
                msisdn = normalize_msisdn(msisdn)
        documents = journal_timeline(
            msisdn=msisdn,
            payment_id=params["payment_id"],
            carrier_reference=params["carrier_reference"],
            app=params["app"],
            user_ref=params["user_ref"],
        )
        context = {
            **self.admin_site.each_context(request),
            "title": "Interaction timeline",
            "params": params,
            "searched": any(params.values()),
            "count": len(documents),
            "table": journal_render(documents),
        }
        return TemplateResponse(request, "admin/journal/timeline.html", context)

    def _one(self, request: HttpRequest, pk: int, allowed: bool) -> Payment:
        if not allowed:
            raise PermissionDenied
        payment = self._payment(request, str(pk))
        if payment is None:
            raise Http404("No such payment.")
        return payment

    def _back(self, payment: Payment) -> HttpResponseRedirect:
        return HttpResponseRedirect(reverse("admin:payments_payment_change", args=[payment.pk]))

    def refund_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        payment = self._one(request, pk, self.has_refund_permission(request))
        return self._operation(request, [payment], "refund", "Refund payment") or self._back(payment)

    def reverse_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        payment = self._one(request, pk, self.has_reverse_permission(request))
        return self._operation(request, [payment], "reverse", "Reverse payment") or self._back(payment)

    def query_status_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        payment = self._one(request, pk, self.has_refund_permission(request) and request.method == "POST")
        result = query_carrier_status(user=staff_user(request), payment=payment)
        self.message_user(request, result.message, level=messages.SUCCESS if result.ok else messages.ERROR)
        return self._back(payment)

    def resend_webhook_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        payment = self._one(request, pk, self.has_resend_webhook_permission(request) and request.method == "POST")
        result = resend_payment_webhook(user=staff_user(request), payment=payment)
        self.message_user(request, result.message, level=messages.SUCCESS if result.ok else messages.ERROR)
        return self._back(payment)

    @admin.action(description="Refund selected payments…", permissions=["refund"])
    def refund(self, request: HttpRequest, queryset: Any) -> TemplateResponse | None:
        return self._operation(request, list(queryset.select_related("app", "carrier")), "refund", "Refund payments")

    @admin.action(description="Reverse selected payments…", permissions=["reverse"])
    def reverse(self, request: HttpRequest, queryset: Any) -> TemplateResponse | None:
        return self._operation(request, list(queryset.select_related("app", "carrier")), "reverse", "Reverse payments")

    def _operation(
        self, request: HttpRequest, payments: list[Payment], action: str, title: str
    ) -> TemplateResponse | None:
        """The confirmation page of a refund or reversal: a preview of exactly what will happen (the amount
        typed, once previewed), then the action itself on confirmation."""
        data = request.POST if request.POST.get("confirm") or request.POST.get("preview") else None
        form: forms.Form = RefundForm(data, payments=payments) if action == "refund" else ReasonForm(data)
        amount = None
        if form.is_bound and form.is_valid():
            amount = form.cleaned_data.get("amount")
            if request.POST.get("confirm"):
                user = staff_user(request)
                if isinstance(form, RefundForm):
                    results = ask_refunds(user=user, payments=payments, reason=form.reason, amount_minor=amount)
                else:
                    results = reverse_payments(user=user, payments=payments, reason=form.cleaned_data["reason"])
                for result in results:
                    level = messages.SUCCESS if result.ok else messages.ERROR
                    self.message_user(request, f"{result.payment.public_id}: {result.message}", level=level)
                return None
        bulk = len(payments) > 1
        context = {
            **self.admin_site.each_context(request),
            "title": title,
            "opts": self.model._meta,
            "queryset": payments,
            "preview": [preview_operation(p, action, amount_minor=amount, bulk=bulk) for p in payments],
            "form": form,
            "action": action,
        }
        return TemplateResponse(request, "admin/payments/payment/confirm_operation.html", context)


@admin.register(Refund)
class RefundAdmin(RecordAdmin):
    list_display = ["public_id", "created_at", "payment", "amount", "status", *OUTCOME_FIELDS]
    amount = money_column("amount_minor")
    list_filter = ["status", OutcomeUnknownFilter, "via_carrier"]
    search_fields = ["=public_id", "=carrier_reference"]  # and the payment's public id, below
    list_select_related = ["payment"]

    def get_search_results(self, request: HttpRequest, queryset: Any, search_term: str) -> tuple[Any, bool]:
        found, duplicates = super().get_search_results(request, queryset, search_term)
        return also_by_payment_public_id(queryset, found, search_term, payment="payment"), duplicates

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class PendingFirst(admin.SimpleListFilter):
    """The approvals list opens on those waiting for a decision."""

    title = "status"
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [*((str(value), str(label)) for value, label in RefundApproval.Status.choices), ("all", "all")]

    def choices(self, changelist: Any) -> Any:
        current = self.value() or RefundApproval.Status.PENDING
        for value, label in self.lookup_choices:
            yield {
                "selected": current == value,
                "query_string": changelist.get_query_string({self.parameter_name: value}),
                "display": label,
            }

    def queryset(self, request: HttpRequest, queryset: Any) -> Any:
        value = self.value() or RefundApproval.Status.PENDING
        return queryset if value == "all" else queryset.filter(status=value)


@admin.register(RefundApproval)
class RefundApprovalAdmin(RecordAdmin):
    """Four-eyes refunds: those waiting for a second person first; approve or reject each with a reason."""

    list_display = ["id", "requested_at", "payment_link", "amount", "reason", "requested_by", "status", "decided_by"]
    list_filter = [PendingFirst]
    list_select_related = ["requested_by", "decided_by"]
    change_form_template = "admin/payments/refundapproval/change_form.html"

    @admin.display(description="amount")
    def amount(self, approval: RefundApproval) -> str:
        if approval.amount_minor is None:
            return "all that is left"
        return format_money(approval.amount_minor, approval.currency)

    @admin.display(description="payment")
    def payment_link(self, approval: RefundApproval) -> str:
        url = reverse("admin:payments_payment_change", args=[approval.payment_id])
        return format_html('<a href="{}">{}</a>', url, approval.payment_id)

    def has_approve_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm("payments.approve_refund"))

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_urls(self) -> list[Any]:
        decide = path(
            "<int:pk>/decide/",
            self.admin_site.admin_view(self.decide_view),
            name="payments_refundapproval_decide",
        )
        return [decide, *super().get_urls()]

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> Any:
        approval = RefundApproval.objects.filter(pk=int(object_id)).first() if object_id.isdigit() else None
        extra_context = {**(extra_context or {})}
        if approval is not None and approval.status == RefundApproval.Status.PENDING:
            if not self.has_approve_permission(request):
                extra_context["decision_note"] = "Approving refunds takes the permission to approve refunds."
            elif approval.requested_by_id == request.user.pk:
                extra_context["decision_note"] = "You asked for this refund: another person approves or rejects it."
            else:
                extra_context["decision_form"] = ReasonForm()
                extra_context["decide_url"] = reverse("admin:payments_refundapproval_decide", args=[approval.pk])
        return super().change_view(request, object_id, form_url, extra_context)

    def decide_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        if request.method != "POST" or not self.has_approve_permission(request):
            raise PermissionDenied
        form = ReasonForm(request.POST)
        back = HttpResponseRedirect(reverse("admin:payments_refundapproval_change", args=[pk]))
        if not form.is_valid() or request.POST.get("decision") not in ("approve", "reject"):
            self.message_user(request, "Give a reason for your decision.", level=messages.ERROR)
            return back
        decide = approve_refund if request.POST["decision"] == "approve" else reject_refund
        try:
            result = decide(user=staff_user(request), approval_id=pk, reason=form.cleaned_data["reason"])
        except RefundApproval.DoesNotExist:
            raise Http404("No such refund approval.") from None
        except ApprovalRefused as refused:
            self.message_user(request, str(refused), level=messages.ERROR)
            return back
        level = messages.SUCCESS if result.ok else messages.ERROR
        self.message_user(request, f"{result.payment.public_id}: {result.message}", level=level)
        return HttpResponseRedirect(reverse("admin:payments_refundapproval_changelist"))


@admin.register(Reversal)
class ReversalAdmin(RecordAdmin):
    """Reversals, read-only: they are requested from the payment's page."""

    list_display = ["id", "created_at", "payment", "status", "via_carrier", "reason", "requested_by", "completed_at"]
    list_filter = ["status", OutcomeUnknownFilter, "via_carrier"]
    search_fields = ["=payment__carrier_reference"]  # and the payment's public id, below
    list_select_related = ["payment"]

    def get_search_results(self, request: HttpRequest, queryset: Any, search_term: str) -> tuple[Any, bool]:
        found, duplicates = super().get_search_results(request, queryset, search_term)
        return also_by_payment_public_id(queryset, found, search_term, payment="payment"), duplicates

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class LedgerLineInline(ReadOnlyInline):
    model = LedgerLine
    fields = ["account", "amount"]
    amount = money_column("amount_minor")


@admin.register(LedgerEntry)
class LedgerEntryAdmin(RecordAdmin):
    """The ledger, read-only (it is append-only): each entry with its balanced lines."""

    list_display = ["id", "created_at", "kind", "payment", "memo"]
    # A range, not a date hierarchy: the hierarchy reads the first and last dates and every year of the whole
    # ledger on each page.
    list_filter = ["kind", ("created_at", UtcRangeDateTimeFilter)]
    list_filter_submit = True
    # Newest first by the indexed time, so that a range reads its own rows only: by id, PostgreSQL would walk
    # every newer entry to find an old day's.
    ordering = ["-created_at", "-id"]
    search_fields = []  # the payment's public id, below
    list_select_related = ["payment"]
    inlines = [LedgerLineInline]

    def get_search_results(self, request: HttpRequest, queryset: Any, search_term: str) -> tuple[Any, bool]:
        found, duplicates = super().get_search_results(request, queryset, search_term)
        return also_by_payment_public_id(queryset, found, search_term, payment="payment"), duplicates

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(LedgerLine)
class LedgerLineAdmin(RecordAdmin):
    list_display = ["id", "entry", "account", "amount"]
    list_filter = [recent_values_filter("currency"), "entry__kind"]
    ordering = ["-id"]
    fields = ["entry", "account", "amount"]
    amount = money_column("amount_minor")

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return self.fields

    search_fields = ["=account"]
    list_select_related = ["entry"]

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
    list_filter = ["status", recent_values_filter("event_type", title="event type"), "app"]
    search_fields = ["=message_id"]  # and the payment's public id, below
    list_select_related = ["app"]
    inlines = [WebhookAttemptInline]

    def get_search_results(self, request: HttpRequest, queryset: Any, search_term: str) -> tuple[Any, bool]:
        found, duplicates = super().get_search_results(request, queryset, search_term)
        return also_by_payment_public_id(queryset, found, search_term, payment="payment"), duplicates

    actions = ["replay"]

    def has_replay_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm("payments.change_webhookdelivery"))

    @admin.action(description="Send again now (same webhook-id)", permissions=["replay"])
    def replay(self, request: HttpRequest, queryset: Any) -> None:
        for delivery in queryset:
            webhooks.replay(delivery=delivery)
        self.message_user(request, f"{queryset.count()} webhook(s) queued again.")


@admin.register(CarrierNotification)
class CarrierNotificationAdmin(RecordAdmin):
    list_display = ["received_at", "carrier", "notification_id", "kind", "outcome", "raw_code", "result"]
    list_filter = ["kind", "outcome", ("carrier", ConfiguredCarrierFilter)]
    search_fields = ["=notification_id", "=carrier_reference"]
    list_select_related = ["carrier"]


@admin.register(OutboxMessage)
class OutboxMessageAdmin(RecordAdmin):
    list_display = ["id", "task", "queue", "created_at", "sent_at"]
    list_filter = ["queue", "task"]
