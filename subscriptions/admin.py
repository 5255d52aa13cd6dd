"""The subscriptions' admin: plans and their offers per carrier (configuration, with a reason and a history),
subscriptions (a record the system writes: found, read, cancelled with a reason), and the player page's section."""

from typing import Any
from urllib.parse import urlencode

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.shortcuts import redirect
from django.urls import path, reverse
from django.utils import timezone
from unfold.contrib.filters.admin import ChoicesDropdownFilter, RelatedDropdownFilter
from unfold.decorators import display

from carriers.admin import ConfiguredCarrierFilter
from journal.audit_admin import AuditedAdmin
from payments import player_sections
from payments.admin import CarrierFilter, PlayerRecordAdmin, player_url, shown_msisdn, shows_full_msisdn, staff_user
from payments.models import Payment
from payments.player_sections import PlayerSection
from payments.selectors import Player
from payments.services.refunds import may_be_refunded
from playpay.admin_base import TabularInline
from playpay.errors import DomainError
from playpay.money import format_money
from playpay.redaction import mask_msisdn
from playpay.times import utc_text
from subscriptions.models import Plan, PlanOffer, Subscription, SubscriptionStatus
from subscriptions.selectors import (
    player_subscriptions,
    search_subscriptions,
    skipped_notices,
    staff_actions,
    subscription_periods,
)
from subscriptions.services.staff import cancel_for_staff
from subscriptions.services.state_machine import FINAL_STATUSES
from subscriptions.services.subscriptions import PERIOD_WORDS

STATUS_LABELS = {
    SubscriptionStatus.ACTIVE: "success",
    SubscriptionStatus.PENDING_OPT_IN: "info",
    SubscriptionStatus.PAST_DUE: "warning",
    SubscriptionStatus.SUSPENDED: "warning",
    SubscriptionStatus.CANCELLED: "danger",
    SubscriptionStatus.EXPIRED: "danger",
}


def offer_price(offer: PlanOffer) -> str:
    """What the offer charges, as a person reads it: "£4.99 per week", "£0.99 the first week, then £4.99 per week"."""
    every = PERIOD_WORDS[offer.plan.period]
    regular = offer.price_point
    price = f"{format_money(regular.amount_minor, regular.currency)} per {every}"
    first = offer.first_period_price_point
    if first is not None:
        price = f"{format_money(first.amount_minor, first.currency)} the first {every}, then {price}"
    fallback = offer.fallback_price_point
    if fallback is not None:
        price += f"; {format_money(fallback.amount_minor, fallback.currency)} if the balance is too low (fallback)"
    return price


def agreed_price(subscription: Subscription) -> str:
    """What the subscription's renewals charge: the regular price the player agreed to at opt-in ("£4.99 per
    week"), whatever its offer charges new subscribers now."""
    every = PERIOD_WORDS[subscription.plan.period]
    return f"{format_money(subscription.amount_minor, subscription.currency)} per {every}"


OFFER_RELATIONS = ["plan", "carrier", "price_point", "first_period_price_point", "fallback_price_point"]


class PlanOfferInline(TabularInline):  # type: ignore[type-arg]
    """A plan's offers, one per carrier it is sold on: the plan is available where it has an offer."""

    model = PlanOffer
    extra = 0
    fields = ["carrier", "price_point", "first_period_price_point", "fallback_price_point", "price"]
    readonly_fields = ["price"]
    autocomplete_fields = ["carrier", "price_point", "first_period_price_point", "fallback_price_point"]

    def get_queryset(self, request: HttpRequest) -> Any:
        return super().get_queryset(request).select_related(*OFFER_RELATIONS)

    @admin.display(description="charged")
    def price(self, offer: PlanOffer) -> str:
        return offer_price(offer) if offer.pk else "—"


@admin.register(Plan)
class PlanAdmin(AuditedAdmin):
    """What apps sell by subscription: the period, a free trial, and per carrier the prices (its offers)."""

    list_display = ["code", "name", "app", "period", "trial", "is_active", "offered_on"]
    list_filter = ["is_active", "period", ("app", RelatedDropdownFilter), ("offers__carrier", ConfiguredCarrierFilter)]
    search_fields = ["code", "name", "app__name"]
    list_select_related = ["app"]
    readonly_fields = ["created_at"]
    fields = ["app", "code", "name", "period", "trial_days", "is_active", "created_at"]
    inlines = [PlanOfferInline]

    def get_queryset(self, request: HttpRequest) -> Any:
        return (
            super()
            .get_queryset(request)
            .prefetch_related(
                "offers__carrier",
                "offers__price_point",
                "offers__first_period_price_point",
                "offers__fallback_price_point",
            )
        )

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        # Subscriptions' periods follow their plan's: its app, code and period never change once made (a new
        # plan instead). Free trials are not sold yet (docs/subscriptions.md): the field stays 0.
        return ["created_at", "trial_days", *(["app", "code", "period"] if obj is not None else [])]

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # subscriptions keep their plan: a plan no longer sold is made inactive

    @admin.display(description="trial")
    def trial(self, plan: Plan) -> str:
        return f"{plan.trial_days} days" if plan.trial_days else "—"

    @admin.display(description="offered on")
    def offered_on(self, plan: Plan) -> str:
        offers = plan.offers.all()  # prefetched, each with its plan
        return "; ".join(f"{offer.carrier.name}: {offer_price(offer)}" for offer in offers) or "nowhere yet"


@admin.register(PlanOffer)
class PlanOfferAdmin(AuditedAdmin):
    """Where each plan is sold and at what price: one offer per plan and carrier."""

    list_display = ["plan", "app", "carrier", "price", "takes_subscriptions"]
    list_filter = [("carrier", ConfiguredCarrierFilter), ("plan__app", RelatedDropdownFilter), "plan__period"]
    search_fields = ["plan__code", "plan__name", "carrier__name", "carrier__slug"]
    list_select_related = [*OFFER_RELATIONS, "plan__app"]
    autocomplete_fields = ["plan", "carrier", "price_point", "first_period_price_point", "fallback_price_point"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return ["plan", "carrier"] if obj is not None else []  # an offer never moves (PlanOffer.clean)

    @admin.display(description="app", ordering="plan__app__name")
    def app(self, offer: PlanOffer) -> str:
        return str(offer.plan.app)

    @admin.display(description="charged")
    def price(self, offer: PlanOffer) -> str:
        return offer_price(offer)

    @admin.display(description="carrier takes subscriptions", boolean=True)
    def takes_subscriptions(self, offer: PlanOffer) -> bool:
        carrier = offer.carrier
        return carrier.is_active and carrier.supports_subscriptions


class CancelForm(forms.Form):
    """The subscription page's cancellation (its template writes the fields): when it takes effect, and why."""

    when = forms.ChoiceField(choices=[("period_end", "at the end of the paid period"), ("now", "now")])
    reason = forms.CharField(
        max_length=200, help_text="Required; kept with the subscription's history and in the staff log."
    )


def entitlement_text(subscription: Subscription) -> str:
    now = timezone.now()
    until = subscription.entitled_until
    if until is not None and until > now:
        return f"entitled until {utc_text(until)}"
    if until is not None:
        return f"not entitled (since {utc_text(until)})"
    return "not entitled"


def subscription_header(subscription: Subscription, *, full_msisdn: bool) -> dict[str, Any]:
    """What the subscription page shows first: plan and price, status, entitlement, player, carrier."""
    notes = []
    if subscription.cancel_at_period_end and subscription.status not in FINAL_STATUSES:
        notes.append(f"cancels at the end of this period ({utc_text(subscription.current_period_end)})")
    if subscription.carrier_managed:
        notes.append(f"renewed by the carrier ({subscription.carrier_reference or 'not handed over yet'})")
        if subscription.next_charge_at:
            notes.append(f"the carrier is asked about it {utc_text(subscription.next_charge_at)} if it tells nothing")
        if subscription.carrier_cancel_due_at:
            notes.append(
                "the carrier has not confirmed the cancellation yet: told again "
                f"{utc_text(subscription.carrier_cancel_due_at)}"
            )
        elif subscription.carrier_cancel_attempts:
            notes.append("the carrier never confirmed the cancellation: cancel it at the carrier by hand")
    elif subscription.next_charge_at and not subscription.cancel_at_period_end:
        notes.append(f"next charge {utc_text(subscription.next_charge_at)}")
    if subscription.cancelled_at:
        notes.append(f"cancelled {utc_text(subscription.cancelled_at)}")
    if subscription.cancel_reason:
        notes.append(f"cancellation reason: {subscription.cancel_reason}")
    return {
        "plan": subscription.plan,
        "price": agreed_price(subscription),
        "status": subscription.get_status_display(),
        "status_value": subscription.status,
        "entitlement": entitlement_text(subscription),
        "notes": notes,
        "msisdn": subscription.msisdn if full_msisdn else mask_msisdn(subscription.msisdn),
        "user_ref": subscription.user_ref,
        "app": subscription.app.name,
        "carrier": subscription.carrier,
        "period": utc_text(subscription.current_period_start) + " → " + utc_text(subscription.current_period_end)
        if subscription.current_period_start
        else "—",
        "created": utc_text(subscription.created_at),
    }


@admin.register(Subscription)
class SubscriptionAdmin(PlayerRecordAdmin):
    list_display = [
        "public_id",
        "created",
        "status_badge",
        "user_ref",
        "number",
        "plan",
        "carrier",
        "app",
        "entitled",
        "next_charge",
    ]
    list_display_links = ["public_id"]
    list_filter = [
        ("status", ChoicesDropdownFilter),
        ("plan", RelatedDropdownFilter),
        ("carrier", CarrierFilter),
        ("app", RelatedDropdownFilter),
    ]
    list_filter_submit = True
    search_fields = ["public_id"]  # one box, read by subscriptions.selectors.search_subscriptions
    search_help_text = (
        "Subscription id (or its first 8+ characters), phone number in any format, user_ref, idempotency key, "
        "or the id of one of its payments."
    )
    list_select_related = ["app", "carrier", "plan"]
    change_form_template = "admin/subscriptions/subscription/change_form.html"

    @admin.display(description="created (UTC)", ordering="id")
    def created(self, subscription: Subscription) -> str:
        return utc_text(subscription.created_at)

    @display(description="status", ordering="status", label=STATUS_LABELS)  # type: ignore[untyped-decorator]
    def status_badge(self, subscription: Subscription) -> str:
        return subscription.status

    @admin.display(description="entitled until")
    def entitled(self, subscription: Subscription) -> str:
        until = subscription.entitled_until
        return utc_text(until) if until is not None and until > timezone.now() else "—"

    @admin.display(description="next charge")
    def next_charge(self, subscription: Subscription) -> str:
        if subscription.carrier_managed:
            return "by the carrier"
        return utc_text(subscription.next_charge_at)

    def get_search_results(self, request: HttpRequest, queryset: Any, search_term: str) -> tuple[Any, bool]:
        return search_subscriptions(term=search_term, queryset=queryset), False

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> Any:
        # A search that names one subscription opens it.
        term = request.GET.get("q", "").strip()
        if term and not set(request.GET) - {"q"} and self.has_view_permission(request):
            first_two = list(search_subscriptions(term=term).values_list("pk", flat=True)[:2])
            if len(first_two) == 1:
                return redirect("admin:subscriptions_subscription_change", first_two[0])
        return super().changelist_view(request, extra_context)

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        # The story is told above (header, periods, history); the row itself, folded.
        return [("Raw fields", {"classes": ["collapse"], "fields": self.get_readonly_fields(request, obj)})]

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_cancel_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm("subscriptions.cancel_subscription"))

    def _subscription(self, request: HttpRequest, object_id: str) -> Subscription | None:
        if not str(object_id).isdigit():
            return None
        return (
            self.get_queryset(request)
            .select_related("app", "carrier", "plan", *(f"offer__{name}" for name in OFFER_RELATIONS))
            .filter(pk=int(object_id))
            .first()
        )

    def charge_rows(self, request: HttpRequest, subscription: Subscription) -> list[dict[str, Any]]:
        """The periods and their charges, each charge linking to its payment, and to its refund where this
        person may refund it and it can be refunded."""
        may_refund = request.user.has_perm("payments.refund_payment")
        periods = []
        for period in subscription_periods(subscription):
            charges = []
            for row in period.charges:
                payment: Payment | None = row.payment
                charges.append(
                    {
                        "charge": row.charge,
                        "amount": row.amount,
                        "payment": payment,
                        "payment_url": reverse("admin:payments_payment_change", args=[payment.pk]) if payment else "",
                        "refund_url": reverse("admin:payments_payment_refund", args=[payment.pk])
                        if payment is not None and may_refund and may_be_refunded(payment)
                        else "",
                    }
                )
            periods.append({"period": period, "charges": charges})
        return periods

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> Any:
        subscription = self._subscription(request, object_id)
        if subscription is not None:
            can_cancel = self.has_cancel_permission(request) and subscription.status not in FINAL_STATUSES
            extra_context = {
                **(extra_context or {}),
                "header": subscription_header(subscription, full_msisdn=shows_full_msisdn(request)),
                "player_url": player_url(Player(app=subscription.app, user_ref=subscription.user_ref)),
                "periods": self.charge_rows(request, subscription),
                "skipped_notices": skipped_notices(subscription),
                "status_changes": list(subscription.history.order_by("id")),
                "staff_actions": list(staff_actions(subscription)),
                "cancel_form": CancelForm() if can_cancel else None,
                "cancel_at_period_end_allowed": subscription.status == SubscriptionStatus.ACTIVE,
                "cancel_url": reverse("admin:subscriptions_subscription_cancel", args=[subscription.pk]),
            }
        return super().change_view(request, object_id, form_url, extra_context)

    def get_urls(self) -> list[Any]:
        cancel = path(
            "<int:pk>/cancel/",
            self.admin_site.admin_view(self.cancel_view),
            name="subscriptions_subscription_cancel",
        )
        return [cancel, *super().get_urls()]

    def cancel_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        """Cancel at the period's end or now, with a reason; without one nothing changes."""
        if not self.has_cancel_permission(request):
            raise PermissionDenied
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])  # a link or a reload never cancels
        subscription = self._subscription(request, str(pk))
        if subscription is None:
            raise Http404("No such subscription.")
        back = HttpResponseRedirect(reverse("admin:subscriptions_subscription_change", args=[pk]))
        form = CancelForm(request.POST)
        if not form.is_valid():
            self.message_user(
                request,
                "Give a reason for the cancellation (and when it takes effect): nothing was changed.",
                level=messages.ERROR,
            )
            return back
        try:
            cancelled = cancel_for_staff(
                user=staff_user(request),
                subscription=subscription,
                at_period_end=form.cleaned_data["when"] == "period_end",
                reason=form.cleaned_data["reason"],
                now=timezone.now(),
            )
        except DomainError as error:
            self.message_user(request, f"Not cancelled: {error.detail}", level=messages.ERROR)
            return back
        if cancelled.status == SubscriptionStatus.CANCELLED:
            message = "Cancelled now: the player is no longer entitled and is not charged again."
        else:
            message = f"Cancels at the end of the period ({utc_text(cancelled.current_period_end)}); not renewed."
        self.message_user(request, message, level=messages.SUCCESS)
        return back


PLAYER_SUBSCRIPTIONS = 50  # listed on a player's page, newest first; the subscription list has the rest


def player_section(request: HttpRequest, player: Player) -> PlayerSection | None:
    """The player page's "Subscriptions" section (registered below, as the admin loads)."""
    if not request.user.has_perm("subscriptions.view_subscription"):
        return None
    subscriptions = player_subscriptions(player, limit=PLAYER_SUBSCRIPTIONS + 1)
    more = len(subscriptions) > PLAYER_SUBSCRIPTIONS
    rows = []
    for subscription in subscriptions[:PLAYER_SUBSCRIPTIONS]:
        rows.append(
            {
                "subscription": subscription,
                "url": reverse("admin:subscriptions_subscription_change", args=[subscription.pk]),
                "price": agreed_price(subscription),
                "entitlement": entitlement_text(subscription),
                "created": utc_text(subscription.created_at),
                "msisdn": shown_msisdn(request, subscription.msisdn),
            }
        )
    return PlayerSection(
        title="Subscriptions",
        template="admin/subscriptions/player_section.html",
        context={
            "rows": rows,
            "more": more,
            # The list's search takes the number (E.164) or the user_ref, as the player page's own address does.
            "list_url": reverse("admin:subscriptions_subscription_changelist")
            + "?"
            + urlencode({"q": player.msisdn or player.user_ref}),
        },
    )


player_sections.register(player_section)  # the player page's "Subscriptions" section, as the admin loads
