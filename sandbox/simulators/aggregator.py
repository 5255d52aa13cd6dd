"""Simulator of the DCB aggregator API (docs/carriers/aggregator.md): signed, asynchronous.

Subscriptions are carrier-managed: the simulator holds each one's schedule and charges its renewals by itself
(`run_schedule`, run every minute by the sandbox's periodic job: the period that has come, once; a declined one
again a day later), or when a test tells it to (`renew`); it tells of renewals, declines and the player's STOP
(`stop`) by signed callback, keeping every event it sent for the status query.

Merchant `playpay-demo` signs requests with API_SECRET; the simulator signs callbacks
with CALLBACK_SECRET. Charges are processed at once, and their results are posted to
the callback URL in the background, retried until answered 2xx. Charges are the simulator's shared
state (core.Records, keyed by charge id), so every process serving it is the same aggregator.
"""

import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path

from carriers.adapters.aggregator import sign
from sandbox.simulators.core import Decline, simulator, simulator_view
from subscriptions.periods import Period, boundary, index_at

logger = logging.getLogger(__name__)

MERCHANT_ID = "playpay-demo"
API_SECRET = "aggregator-api-secret"  # noqa: S105 - a simulator's published test secret
CALLBACK_SECRET = "aggregator-callback-secret"  # noqa: S105
MAX_PIN_ATTEMPTS = 3
FRESHNESS_SECONDS = 300
# What a 503 (the simulator's outage) asks the client to wait.
RETRY_AFTER_SECONDS = 5

SIM = simulator("aggregator")
# Charge ids start with it (and key the charges among the simulator's records).
CHARGE_PREFIX = "ch_"
_DECLINE_CODES = {
    Decline.INSUFFICIENT_FUNDS: ("INSUFFICIENT_BALANCE", "Subscriber balance too low"),
    Decline.USER_BARRED: ("SUBSCRIBER_BARRED", "Subscriber is barred from premium billing"),
    Decline.SPENDING_LIMIT: ("SPEND_LIMIT_REACHED", "Monthly spend limit reached"),
    Decline.UNKNOWN_SUBSCRIBER: ("UNKNOWN_SUBSCRIBER", "MSISDN is not a subscriber of a supported operator"),
}
# Declines the operator knows before any PIN is sent.
_AT_START = {Decline.USER_BARRED, Decline.UNKNOWN_SUBSCRIBER}


def _error(status: int, code: str, message: str) -> JsonResponse:
    return JsonResponse({"error": {"code": code, "message": message}}, status=status)


def _fault(msisdn: str) -> HttpResponse | None:
    """The number's transport fault; an outage's 503 says how long to wait in `Retry-After`."""
    fault = SIM.transport_fault(msisdn)
    if fault is not None and fault.status_code == 503:
        fault = _error(503, "TEMPORARILY_UNAVAILABLE", "try again later")
        fault["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return fault


def _authenticate(request: HttpRequest) -> JsonResponse | None:
    timestamp = request.headers.get("X-Timestamp", "")
    if request.headers.get("X-Merchant-Id") != MERCHANT_ID:
        return _error(401, "UNKNOWN_MERCHANT", "X-Merchant-Id is not a known merchant")
    if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > FRESHNESS_SECONDS:
        return _error(401, "STALE_REQUEST", "X-Timestamp is missing or too far from now")
    if request.headers.get("X-Signature", "") != sign(API_SECRET, timestamp, request.body):
        return _error(401, "INVALID_SIGNATURE", "the signature does not match the body")
    return None


def _event(event_type: str, charge: dict[str, Any], **extra: Any) -> tuple[bytes, dict[str, str]]:
    data = {
        key: charge.get(key)
        for key in ("charge_id", "merchant_reference", "status", "reason_code", "reason_message", "attempts_remaining")
    }
    body = json.dumps(
        {"event_id": SIM.new_id("evt_"), "type": event_type, "created": int(time.time()), "data": data | extra}
    ).encode()
    timestamp = str(int(time.time()))
    return body, {
        "Content-Type": "application/json",
        "X-Timestamp": timestamp,
        "X-Signature": sign(CALLBACK_SECRET, timestamp, body),
    }


def _public(charge: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in charge.items() if key not in ("pin", "request", "refunds", "met")}


def _settle(charge: dict[str, Any]) -> list[tuple[bytes, dict[str, str]]]:
    """Charge the player (or decline); returns the events to send, processing first."""
    scenario = SIM.scenario(charge["msisdn"])
    processing = _event("charge.processing", {**charge, "status": "pin_submitted"})
    if scenario.never_final:
        return [processing]
    if "met" not in charge:  # one charge in the life of the number, however often it is settled
        charge["met"] = SIM.charge_decline(charge["msisdn"])
    if charge["met"] is not None:
        charge["status"] = "failed"
        charge["reason_code"], charge["reason_message"] = _DECLINE_CODES[Decline(charge["met"])]
        return [processing, _event("charge.failed", charge)]
    if not charge.get("charged"):
        charge["charged"] = True
        SIM.record_charge(charge["msisdn"], charge["charge_id"])
    charge["status"] = "succeeded"
    return [processing, _event("charge.succeeded", charge)]


@simulator_view
def ping(request: HttpRequest) -> HttpResponse:
    """A signed ping: proves endpoint and credentials without touching a charge."""
    if (fault := _fault("")) is not None:
        return fault
    if (denied := _authenticate(request)) is not None:
        return denied
    if request.method != "GET":
        return _error(405, "METHOD_NOT_ALLOWED", "GET the ping")
    return JsonResponse({"merchant_id": MERCHANT_ID, "status": "ok"})


@simulator_view
def charges(request: HttpRequest) -> HttpResponse:
    if (denied := _authenticate(request)) is not None:
        return denied
    if request.method == "GET":
        reference = request.GET.get("merchant_reference", "")
        found = SIM.records.find(CHARGE_PREFIX, merchant_reference=reference)
        if not found:
            return _error(404, "NOT_FOUND", "no charge has this merchant_reference")
        return JsonResponse(_public(found[0]))
    if request.method != "POST":
        return _error(405, "METHOD_NOT_ALLOWED", "POST a charge")
    try:
        body = json.loads(request.body)
        msisdn, flow, reference = str(body["msisdn"]), str(body["flow"]), str(body["merchant_reference"])
        amount = int(body["amount"])
    except (ValueError, KeyError, TypeError, OverflowError):  # OverflowError: a number such as 1e400
        return _error(400, "INVALID_REQUEST", "merchant_reference, msisdn, amount, currency and flow are required")
    if flow not in ("pin", "one_click") or amount <= 0:
        return _error(400, "INVALID_REQUEST", "flow is pin or one_click; amount is positive minor units")
    if (fault := _fault(msisdn)) is not None:
        return fault
    if SIM.malformed(msisdn):
        return HttpResponse(b'{"charge_id": "ch_', status=202, content_type="application/json")
    charge_id = SIM.new_id(CHARGE_PREFIX)
    # The merchant_reference is taken atomically: of two requests with one, on any processes, one charges.
    if not SIM.records.add(f"reference:{reference}", {"charge_id": charge_id, "request": body}):
        existing = SIM.records[f"reference:{reference}"]
        if existing["request"] != body:
            return _error(409, "DUPLICATE_REFERENCE", "merchant_reference was used for another charge")
        return JsonResponse({"charge_id": existing["charge_id"], "status": "accepted"}, status=202)
    charge: dict[str, Any] = {
        "charge_id": charge_id,
        "merchant_reference": reference,
        "msisdn": msisdn,
        "amount": amount,
        "currency": body.get("currency"),
        "flow": flow,
        "status": "accepted",
        "reason_code": None,
        "reason_message": None,
        "attempts_remaining": MAX_PIN_ATTEMPTS,
        "request": body,
    }
    at_start = SIM.next_decline(msisdn)
    accepted = _event("charge.processing", charge)
    if at_start in _AT_START:
        charge["status"] = "failed"
        charge["reason_code"], charge["reason_message"] = _DECLINE_CODES[at_start]
        events = [accepted, _event("charge.failed", charge)]
    elif flow == "pin":
        charge["pin"] = SIM.new_pin()
        charge["status"] = "pin_sent"
        events = [accepted, _event("charge.pin_sent", charge)]
    else:
        events = _settle(charge)
    SIM.records.put(charge_id, charge)
    if flow == "pin" and charge["status"] == "pin_sent":
        SIM.send_sms(msisdn, f"Your PlayPay code is {charge['pin']}")
    SIM.deliver(str(body.get("callback_url", "")), events, msisdn)
    return JsonResponse({"charge_id": charge["charge_id"], "status": "accepted"}, status=202)


@simulator_view
def charge_detail(request: HttpRequest, charge_id: str) -> HttpResponse:
    charge = _known_charge(request, charge_id)
    if isinstance(charge, HttpResponse):
        return charge
    return JsonResponse(_public(charge))


def _known_charge(request: HttpRequest, charge_id: str) -> dict[str, Any] | HttpResponse:
    """The charge a signed request is about, past its number's transport fault; else the answer instead."""
    if (denied := _authenticate(request)) is not None:
        return denied
    charge = SIM.records.get(charge_id)
    if charge is None:
        return _error(404, "NOT_FOUND", "no such charge")
    if (fault := _fault(charge["msisdn"])) is not None:
        return fault
    return charge


@simulator_view
def submit_pin(request: HttpRequest, charge_id: str) -> HttpResponse:
    if (denied := _authenticate(request)) is not None:
        return denied
    body = json.loads(request.body or b"{}")
    # Under the charge's row lock: of two PINs submitted at once, on any processes, one settles the charge.
    with SIM.records.locked(charge_id) as locked:
        if locked is None:
            return _error(404, "NOT_FOUND", "no such charge")
        charge = locked
        if charge["status"] not in ("pin_sent", "pin_rejected"):
            return _error(409, "INVALID_STATE", f"the charge is {charge['status']}")
        if str(body.get("pin", "")) != charge["pin"]:
            charge["attempts_remaining"] -= 1
            if charge["attempts_remaining"] <= 0:
                charge["status"], charge["reason_code"] = "failed", "PIN_ATTEMPTS_EXCEEDED"
                charge["reason_message"] = "Too many wrong PINs"
                events = [_event("charge.failed", charge)]
            else:
                charge["status"], charge["reason_code"] = "pin_rejected", "WRONG_PIN"
                charge["reason_message"] = "The PIN does not match"
                events = [_event("charge.pin_rejected", charge)]
        else:
            charge["reason_code"] = charge["reason_message"] = None
            events = _settle(charge)
    SIM.deliver(charge["request"].get("callback_url", ""), events, charge["msisdn"])
    return JsonResponse({"charge_id": charge_id, "status": "accepted"}, status=202)


@simulator_view
def refunds(request: HttpRequest, charge_id: str) -> HttpResponse:
    """Refund a succeeded charge; a repeat of the same merchant_reference is the same refund."""
    if (denied := _authenticate(request)) is not None:
        return denied
    body = json.loads(request.body or b"{}")
    charge = SIM.records.get(charge_id)
    if charge is not None and (fault := _fault(charge["msisdn"])) is not None:
        return fault  # answered before the lock: the latency is never slept holding it
    reference = str(body.get("merchant_reference") or "")
    # Under the charge's row lock: a refund sent twice at once, on any processes, is made once.
    with SIM.records.locked(charge_id) as charge:
        if charge is None or charge["status"] != "succeeded":
            return _error(409, "NOT_REFUNDABLE", "only a succeeded charge can be refunded")
        refund = charge.setdefault("refunds", {}).get(reference)
        if refund is not None:
            return JsonResponse({"refund_id": refund["refund_id"], "status": "accepted"}, status=202)
        refund = {
            "refund_id": SIM.new_id("rf_"),
            "charge_id": charge_id,
            "merchant_reference": reference,
            "status": "succeeded",
            "amount": body.get("amount"),
        }
        charge["refunds"][reference] = refund
    SIM.deliver(charge["request"].get("callback_url", ""), [_event("refund.succeeded", refund)], charge["msisdn"])
    return JsonResponse({"refund_id": refund["refund_id"], "status": "accepted"}, status=202)


@simulator_view
def refund_detail(request: HttpRequest, charge_id: str, reference: str) -> HttpResponse:
    """A refund by our merchant_reference; 404 if it never came."""
    if (denied := _authenticate(request)) is not None:
        return denied
    charge = SIM.records.get(charge_id)
    refund = (charge or {}).get("refunds", {}).get(reference)
    if refund is None:
        return _error(404, "NOT_FOUND", "no such refund")
    return JsonResponse(dict(refund))


@simulator_view
def reversal(request: HttpRequest, charge_id: str) -> HttpResponse:
    """Reverse a succeeded charge at once (a technical undo, not a refund); answered synchronously."""
    if isinstance(found := _known_charge(request, charge_id), HttpResponse):
        return found
    with SIM.records.locked(charge_id) as charge:
        if charge is None:
            return _error(404, "NOT_FOUND", "no such charge")
        if charge.get("reversal_status") != "succeeded":
            if charge["status"] != "succeeded":
                return _error(409, "NOT_REVERSIBLE", "only a succeeded charge can be reversed")
            charge["reversal_status"] = "succeeded"
    return JsonResponse({"charge_id": charge_id, "reversal_status": "succeeded"})


# Subscription ids start with it (and key the subscriptions among the simulator's records).
SUBSCRIPTION_PREFIX = "sub_"
# A declined period is charged again this long after (until the next period starts: that one is charged then).
RETRY_AFTER = timedelta(days=1)
# How far from now a subscription's anchor may be (about 10 years): its periods are counted from it.
ANCHOR_WITHIN = timedelta(days=3653)


def _subscription_event(event_type: str, subscription: dict[str, Any], **data: Any) -> dict[str, Any]:
    fields = {
        "subscription_id": subscription["subscription_id"],
        "merchant_reference": subscription["merchant_reference"],
    }
    return {"event_id": SIM.new_id("evt_"), "type": event_type, "created": int(time.time()), "data": fields | data}


def signed(event: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    """A subscription event as the simulator posts it: its body and signed headers."""
    body = json.dumps(event).encode()
    timestamp = str(int(time.time()))
    return body, {
        "Content-Type": "application/json",
        "X-Timestamp": timestamp,
        "X-Signature": sign(CALLBACK_SECRET, timestamp, body),
    }


@simulator_view
def subscriptions(request: HttpRequest) -> HttpResponse:
    """Take a subscription's schedule: its first period is paid (the merchant's opt-in), the aggregator charges
    the next ones. A repeat of a merchant_reference is the same subscription (200)."""
    if (denied := _authenticate(request)) is not None:
        return denied
    if request.method != "POST":
        return _error(405, "METHOD_NOT_ALLOWED", "POST a subscription")
    try:
        body = json.loads(request.body)
        reference, msisdn = str(body["merchant_reference"]), str(body["msisdn"])
        amount, anchor, period = int(body["amount"]), int(body["anchor"]), str(body["period"])
    except (ValueError, KeyError, TypeError, OverflowError):  # OverflowError: a number such as 1e400
        return _error(400, "INVALID_REQUEST", "merchant_reference, msisdn, amount, currency, period, anchor required")
    if amount <= 0 or period not in Period.values:
        return _error(400, "INVALID_REQUEST", "amount is positive minor units; period is daily, weekly or monthly")
    if (fault := _fault(msisdn)) is not None:
        return fault
    if abs(anchor - time.time()) > ANCHOR_WITHIN.total_seconds():
        # The schedule counts periods from it for years: one it cannot count would stop the job for everyone.
        return _error(400, "INVALID_REQUEST", "anchor is the first period's start: Unix seconds within 10 years of now")
    first_renewal = boundary(datetime.fromtimestamp(anchor, tz=UTC), period, 1)
    subscription_id = SIM.new_id(SUBSCRIPTION_PREFIX)
    if not SIM.records.add(f"subscription-reference:{reference}", {"subscription_id": subscription_id}):
        existing = SIM.records[f"subscription-reference:{reference}"]["subscription_id"]
        return JsonResponse({"subscription_id": existing, "status": "active"}, status=200)
    SIM.records.put(
        subscription_id,
        {
            "subscription_id": subscription_id,
            "merchant_reference": reference,
            "msisdn": msisdn,
            "amount": amount,
            "currency": body.get("currency"),
            "period": period,
            "anchor": anchor,
            "callback_url": str(body.get("callback_url") or ""),
            "status": "active",
            "periods_paid": 0,
            "next_charge_at": int(first_renewal.timestamp()),
            "events": [],
        },
    )
    return JsonResponse({"subscription_id": subscription_id, "status": "active"}, status=201)


@simulator_view
def subscription_detail(request: HttpRequest, subscription_id: str) -> HttpResponse:
    """A subscription's status and every event sent of it, oldest first."""
    if (denied := _authenticate(request)) is not None:
        return denied
    subscription = SIM.records.get(subscription_id) if subscription_id.startswith(SUBSCRIPTION_PREFIX) else None
    if subscription is None:
        return _error(404, "NOT_FOUND", "no such subscription")
    if (fault := _fault(subscription["msisdn"])) is not None:
        return fault
    return JsonResponse({key: value for key, value in subscription.items() if key != "callback_url"})


Change = Callable[[dict[str, Any]], dict[str, Any] | None]


class UnknownSubscription(LookupError):
    """The simulator holds no such subscription (it was reset since the subscription was found)."""


def _tell(subscription_id: str, make: Change, *, lost: bool) -> dict[str, Any] | None:
    """Change a subscription under its lock (`make` returns its event, or None), keep the event and post it
    (unless `lost`: the callback never arrives, the status query still lists it)."""
    with SIM.records.locked(subscription_id) as subscription:
        if subscription is None:
            raise UnknownSubscription(subscription_id)
        event = make(subscription)
        if event is not None:
            subscription["events"].append(event)
    if event is not None and not lost:
        SIM.deliver(subscription["callback_url"], [signed(event)], subscription["msisdn"])
    return event


def _anchor(subscription: dict[str, Any]) -> datetime:
    return datetime.fromtimestamp(subscription["anchor"], tz=UTC)


def _charge(
    subscription: dict[str, Any], period: int, *, now: datetime, decline: Decline | None = None
) -> dict[str, Any]:
    """Charge `period` (declined as its number's scenario says, or as `decline`) and book the next charge: the
    next period's start, or a declined period's retry a day later if that comes first; the event to send."""
    next_period = boundary(_anchor(subscription), subscription["period"], period + 1)
    declined = decline or SIM.charge_decline(subscription["msisdn"])
    money = {"amount": subscription["amount"], "currency": subscription["currency"]}
    if declined is not None:
        subscription["status"] = "past_due"
        subscription["next_charge_at"] = int(min(now + RETRY_AFTER, next_period).timestamp())
        code, message = _DECLINE_CODES[declined]
        return _subscription_event(
            "subscription.renewal_failed",
            subscription,
            period=period,
            reason_code=code,
            reason_message=message,
            **money,
        )
    charge_id = SIM.new_id(CHARGE_PREFIX)
    SIM.record_charge(subscription["msisdn"], charge_id)
    subscription["periods_paid"], subscription["status"] = period, "active"
    subscription["next_charge_at"] = int(next_period.timestamp())
    return _subscription_event("subscription.renewed", subscription, period=period, charge_id=charge_id, **money)


def renew(subscription_id: str, *, lost: bool = False, decline: Decline | None = None) -> dict[str, Any] | None:
    """Charge a subscription's next period now, whatever its schedule says (declined as its number's scenario
    says, or as `decline`); the event sent, or None when it is cancelled."""

    def make(subscription: dict[str, Any]) -> dict[str, Any] | None:
        if subscription["status"] == "cancelled":
            return None
        return _charge(subscription, subscription["periods_paid"] + 1, now=datetime.now(UTC), decline=decline)

    return _tell(subscription_id, make, lost=lost)


def stop(subscription_id: str, *, lost: bool = False, reason: str = "STOP") -> dict[str, Any] | None:
    """The player sent STOP (or the merchant cancelled, `reason` MERCHANT): the subscription ends, no period is
    charged after it."""

    def make(subscription: dict[str, Any]) -> dict[str, Any] | None:
        if subscription["status"] == "cancelled":
            return None
        subscription["status"] = "cancelled"
        subscription.pop("next_charge_at", None)  # nothing is charged any more
        return _subscription_event("subscription.cancelled", subscription, reason_code=reason)

    return _tell(subscription_id, make, lost=lost)


def time_passes(subscription_id: str, *, seconds: int) -> None:
    """Tests' hook: the aggregator's clock moves `seconds` on for one subscription, whose schedule (anchor and
    next charge) moves that much earlier, under its lock. PlayPay's dates stay: an event names its period by index.
    Call it outside any transaction, as the simulator's other hooks (`renew`, `stop`)."""

    def make(subscription: dict[str, Any]) -> None:
        subscription["anchor"] -= seconds
        if subscription.get("next_charge_at") is not None:
            subscription["next_charge_at"] -= seconds

    _tell(subscription_id, make, lost=True)


@simulator_view
def subscription_cancel(request: HttpRequest, subscription_id: str) -> HttpResponse:
    """The merchant stops a subscription: no period is charged after it; told by `subscription.cancelled` too."""
    if (denied := _authenticate(request)) is not None:
        return denied
    if request.method != "POST":
        return _error(405, "METHOD_NOT_ALLOWED", "POST to cancel")
    if not subscription_id.startswith(SUBSCRIPTION_PREFIX) or subscription_id not in SIM.records:
        return _error(404, "NOT_FOUND", "no such subscription")
    stop(subscription_id, reason="MERCHANT")
    return JsonResponse({"subscription_id": subscription_id, "status": "cancelled"})


def run_schedule(now: datetime) -> int:
    """Charge each subscription whose next charge has come by `now`: the period that contains `now` (a period
    that ended meanwhile is never charged late), or a declined period's retry; how many charges were made
    (declined ones too). Each subscription is read again under its lock and its next charge booked with the
    charge, so a run repeated, or two runs at once on any processes, charge a period once."""

    def make(subscription: dict[str, Any]) -> dict[str, Any] | None:
        due = subscription.get("next_charge_at")
        if subscription["status"] == "cancelled" or due is None or due > now.timestamp():
            return None  # another run charged it (or it was stopped) since it was found
        anchor, paid = _anchor(subscription), subscription["periods_paid"]
        period = index_at(anchor, subscription["period"], now)
        if period <= paid:  # paid ahead (told to renew): charged again when its next period starts
            subscription["next_charge_at"] = int(boundary(anchor, subscription["period"], paid + 1).timestamp())
            return None
        return _charge(subscription, period, now=now)

    made = 0
    for held in SIM.records.find(SUBSCRIPTION_PREFIX, next_charge_at__lte=int(now.timestamp())):
        try:
            told = _tell(held["subscription_id"], make, lost=False)
        except UnknownSubscription:
            continue  # the simulator was reset since: it holds no subscription any more
        except Exception:  # one subscription's fault (a record gone bad) must not stop everyone else's
            logger.exception("aggregator simulator: the schedule failed for %s", held.get("subscription_id"))
            continue
        made += told is not None
    return made


urlpatterns = [
    path("v1/ping", ping),
    path("v1/charges", charges),
    path("v1/charges/<str:charge_id>", charge_detail),
    path("v1/charges/<str:charge_id>/pin", submit_pin),
    path("v1/charges/<str:charge_id>/refunds", refunds),
    path("v1/charges/<str:charge_id>/refunds/<str:reference>", refund_detail),
    path("v1/charges/<str:charge_id>/reversal", reversal),
    path("v1/subscriptions", subscriptions),
    path("v1/subscriptions/<str:subscription_id>", subscription_detail),
    path("v1/subscriptions/<str:subscription_id>/cancel", subscription_cancel),
]
