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
from django.forms.models import BaseInlineFormSet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.dateparse import parse_datetime
from django.utils.html import format_html, format_html_join
from unfold.contrib.filters.admin import (
    AutocompleteSelectFilter,
    ChoicesDropdownFilter,
    RangeDateTimeFilter,
    RangeNumericListFilter,
    RelatedDropdownFilter,
)
from unfold.decorators import display
from unfold.paginator import InfinitePaginator

from carriers.admin import ConfiguredCarrierFilter
from carriers.msisdn import msisdn_readings, normalize_msisdn
from journal.audit_admin import REASON, AuditedAdmin
from journal.models import StaffAction
from journal.selectors import render as journal_render
from journal.selectors import timeline as journal_timeline
from payments.models import (
    CarrierNotification,
    IdempotencyRecord,
    LedgerLine,
    OutboxMessage,
    Payment,
    PaymentStatus,
    PaymentStatusChange,
    PlayerBlock,
    Refund,
    Reversal,
    WebhookAttempt,
    WebhookDelivery,
)
from payments.selectors import (
    Player,
    active_regions,
    amount_bound,
    player_named,
    player_summary,
    search_payments,
)
from payments.services import webhooks
from payments.services.carrier_flow import is_uuid
from payments.services.players import block_player, unblock_player
from payments.services.staff import preview_operation, refund_payments, reverse_payments
from playpay.admin_base import ReadOnlyInline, RecordAdmin
from playpay.errors import DomainError
from playpay.money import format_money
from playpay.redaction import mask_msisdn
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


class PaymentMonthFormSet(BaseInlineFormSet):  # type: ignore[type-arg]
    """A payment's rows, read from its month's partition only (they are partitioned by payment_created_at)."""

    def get_queryset(self) -> Any:
        # Kept, as BaseModelFormSet keeps its own: it is asked for once per form, and a new one reads again.
        if not hasattr(self, "_month_queryset"):
            self._month_queryset = super().get_queryset().filter(payment_created_at=self.instance.created_at)
        return self._month_queryset


class PaymentMonthInline(ReadOnlyInline):
    formset = PaymentMonthFormSet


class StatusChangeInline(PaymentMonthInline):
    model = PaymentStatusChange
    fields = ["created_at", "from_status", "to_status", "actor", "reason"]


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


class RefundInline(PaymentMonthInline):
    model = Refund
    fields = [
        "created_at",
        "amount_minor",
        "currency",
        "status",
        "via_carrier",
        "reason",
        "requested_by",
        "failure_code",
        *OUTCOME_FIELDS,
    ]


class ReversalInline(PaymentMonthInline):
    model = Reversal
    fields = ["created_at", "status", "via_carrier", "reason", "requested_by", "failure_code", *OUTCOME_FIELDS]


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


class OperationForm(forms.Form):
    reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 2, "cols": 60}),
        max_length=255,
        help_text="Required; kept with the action.",
    )
    amount_minor = forms.IntegerField(
        min_value=1, required=False, help_text="Minor units; empty refunds all that is left (one payment only)."
    )


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


def shown_msisdn(user: Any, msisdn: str) -> str:
    """A player's number as this staff member may read it: in full with `payments.view_full_msisdn`, else masked."""
    return msisdn if user.has_perm("payments.view_full_msisdn") else mask_msisdn(msisdn)


def player_url(player: Player) -> str:
    query = (
        {"msisdn": player.msisdn}
        if player.msisdn
        else {"app": player.app.pk if player.app else "", "user_ref": player.user_ref}
    )
    return reverse("admin:payments_payment_player") + "?" + urlencode(query)


@admin.register(Payment)
class PaymentAdmin(RecordAdmin):
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
    paginator = InfinitePaginator
    # unfold renders a row's cells at about 1.5 ms each on a busy 2-core machine: 50 rows a page (more load
    # as the list is scrolled) keep the page within 300 ms, as bench/admin_volume.py measures.
    list_per_page = 50
    # One box: a public id or its first 8+ characters, a number in any format, a user_ref, a carrier reference
    # or an idempotency key (payments.selectors.search_payments); every reading uses an index.
    search_fields = ["public_id"]
    search_help_text = (
        "Payment id (or its first 8+ characters), phone number in any format, user_ref, carrier reference "
        "or idempotency key."
    )
    list_select_related = ["app", "carrier"]
    inlines = [StatusChangeInline, RefundInline, ReversalInline]
    actions = ["refund", "reverse"]
    readonly_fields = ["interactions", "ledger", "carrier_callbacks", "webhook_deliveries", "staff_actions"]

    @admin.display(description="created (UTC)", ordering="created_at")
    def created(self, payment: Payment) -> str:
        return f"{payment.created_at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"

    @admin.display(description="amount", ordering="amount_minor")
    def amount(self, payment: Payment) -> str:
        return format_money(payment.amount_minor, payment.currency)

    @admin.display(description="refunded")
    def refunded(self, payment: Payment) -> str:
        return format_money(payment.refunded_minor, payment.currency) if payment.refunded_minor else "—"

    @display(description="status", ordering="status", label=STATUS_LABELS)  # type: ignore[untyped-decorator]
    def status_badge(self, payment: Payment) -> str:
        return payment.status

    @admin.display(description="MSISDN")
    def number(self, payment: Payment) -> str:
        return mask_msisdn(payment.msisdn)

    def get_list_display(self, request: HttpRequest) -> Any:
        # The number in full for whom their role allows (payments.view_full_msisdn), masked for the others.
        shown = super().get_list_display(request)
        if request.user.has_perm("payments.view_full_msisdn"):
            return ["msisdn" if name == "number" else name for name in shown]
        return shown

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
        shown = [name for name in super().get_readonly_fields(request, obj) if name != "pin_ciphertext"]
        return [*shown, *self.readonly_fields]

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_refund_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm("payments.refund_payment"))

    def has_reverse_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm("payments.reverse_payment"))

    @admin.display(description="interaction timeline (journal)")
    def interactions(self, payment: Payment) -> str:
        player = (
            reverse("admin:payments_payment_timeline")
            + "?"
            + urlencode({"app": payment.app.name, "user_ref": payment.user_ref})
        )
        number = reverse("admin:payments_payment_timeline") + "?" + urlencode({"msisdn": payment.msisdn})
        links = format_html(
            '<p><a href="{}">the player\'s timeline</a> · <a href="{}">this number\'s timeline</a></p>', player, number
        )
        return format_html("{}{}", links, journal_render(journal_timeline(payment_id=str(payment.public_id))))

    def get_urls(self) -> list[Any]:
        extra = [
            path("timeline/", self.admin_site.admin_view(self.timeline_view), name="payments_payment_timeline"),
            path("player/", self.admin_site.admin_view(self.player_view), name="payments_payment_player"),
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
            "title": f"Player {shown_msisdn(request.user, player.msisdn)}"
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
                    "created": f"{payment.created_at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC",
                    "amount": format_money(payment.amount_minor, payment.currency),
                    "msisdn": shown_msisdn(request.user, payment.msisdn),
                }
                for payment in page.object_list
            ],
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

    @admin.display(description="ledger lines")
    def ledger(self, payment: Payment) -> str:
        lines = (
            LedgerLine.objects.filter(entry__payment=payment, payment_created_at=payment.created_at)  # its month only
            .select_related("entry")
            .order_by("id")
        )
        return _table(
            ["entry", "account", "amount (minor)", "currency"],
            [
                (f"{line.entry.kind} #{line.entry_id}", line.account, f"{line.amount_minor:+d}", line.currency)
                for line in lines
            ],
        )

    @admin.display(description="carrier callbacks")
    def carrier_callbacks(self, payment: Payment) -> str:
        rows = CarrierNotification.objects.filter(carrier=payment.carrier, carrier_reference=payment.carrier_reference)
        if not payment.carrier_reference:
            rows = rows.none()
        return _table(
            ["received", "id", "outcome", "raw code", "result"],
            [(f"{n.received_at:%Y-%m-%d %H:%M:%S}", n.notification_id, n.outcome, n.raw_code, n.result) for n in rows],
        )

    @admin.display(description="webhooks to the app")
    def webhook_deliveries(self, payment: Payment) -> str:
        rows = WebhookDelivery.objects.filter(payment=payment).order_by("id")
        return _table(
            ["event", "status", "attempts", "last HTTP status"],
            [(d.event_type, d.status, str(d.attempts), str(d.last_status_code or "")) for d in rows],
        )

    @admin.display(description="staff actions")
    def staff_actions(self, payment: Payment) -> str:
        rows = StaffAction.objects.filter(object_type="payment", object_id=str(payment.public_id)).select_related(
            "user"
        )
        return _table(
            ["when", "who", "action", "reason", "outcome"],
            [(f"{a.created_at:%Y-%m-%d %H:%M}", str(a.user), a.action, a.reason, a.outcome) for a in rows],
        )

    @admin.action(description="Refund selected payments…", permissions=["refund"])
    def refund(self, request: HttpRequest, queryset: Any) -> TemplateResponse | None:
        return self._operation(request, queryset, "refund", "Refund payments")

    @admin.action(description="Reverse selected payments…", permissions=["reverse"])
    def reverse(self, request: HttpRequest, queryset: Any) -> TemplateResponse | None:
        return self._operation(request, queryset, "reverse", "Reverse payments")

    def _operation(self, request: HttpRequest, queryset: Any, action: str, title: str) -> TemplateResponse | None:
        payments = list(queryset.select_related("app", "carrier"))
        form = OperationForm(request.POST if request.POST.get("confirm") else None)
        if form.is_bound and form.is_valid():
            amount = form.cleaned_data["amount_minor"]
            if action == "refund" and amount is not None and len(payments) != 1:
                form.add_error("amount_minor", "An amount can only be given for one payment at a time.")
            else:
                reason, user = form.cleaned_data["reason"], request.user
                assert isinstance(user, AbstractBaseUser)  # the admin requires a signed-in user
                if action == "refund":
                    results = refund_payments(user=user, payments=payments, reason=reason, amount_minor=amount)
                else:
                    results = reverse_payments(user=user, payments=payments, reason=reason)
                for result in results:
                    level = messages.SUCCESS if result.ok else messages.ERROR
                    self.message_user(request, f"{result.payment.public_id}: {result.message}", level=level)
                return None
        context = {
            **self.admin_site.each_context(request),
            "title": title,
            "opts": self.model._meta,
            "queryset": payments,
            "preview": [preview_operation(payment, action) for payment in payments],
            "form": form,
            "action": action,
        }
        return TemplateResponse(request, "admin/payments/payment/confirm_operation.html", context)


@admin.register(Refund)
class RefundAdmin(RecordAdmin):
    list_display = ["public_id", "created_at", "payment", "amount_minor", "currency", "status", *OUTCOME_FIELDS]
    list_filter = ["status", OutcomeUnknownFilter, "via_carrier"]
    search_fields = ["=public_id", "=carrier_reference"]  # and the payment's public id, below
    list_select_related = ["payment"]

    def get_search_results(self, request: HttpRequest, queryset: Any, search_term: str) -> tuple[Any, bool]:
        found, duplicates = super().get_search_results(request, queryset, search_term)
        return also_by_payment_public_id(queryset, found, search_term, payment="payment"), duplicates

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


def _table(headers: list[str], rows: list[tuple[str, ...]]) -> str:
    if not rows:
        return "—"
    head = format_html_join("", "<th>{}</th>", ((h,) for h in headers))
    body = format_html_join(
        "", "<tr>{}</tr>", ((format_html_join("", "<td>{}</td>", ((c,) for c in row)),) for row in rows)
    )
    return format_html("<table><thead><tr>{}</tr></thead><tbody>{}</tbody></table>", head, body)
