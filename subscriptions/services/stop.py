"""STOP sent by SMS: a player texts STOP to the service's number, and the carrier pushes that SMS to PlayPay (on
Parlay X, `notifySmsReception`). Every subscription of that number billed through that carrier that has not
ended is cancelled now, as the app's `POST /api/v1/subscriptions/stop/` would: within that one callback.

`handle_sms` runs in the transaction that recorded the callback's id (a repeat of the same SMS never reaches
it); each cancellation runs right after that commit, still within the callback's request, so that it locks a
renewal's payment before its subscription as every cancellation does, with an outbox message as its fallback.
"""

import functools

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from carriers.adapters.base import Notification
from carriers.errors import InvalidMsisdn
from carriers.models import Carrier
from carriers.msisdn import normalize_msisdn
from payments.services import outbox
from payments.services.carrier_flow import carrier_actor
from subscriptions.errors import IllegalSubscriptionTransition
from subscriptions.models import Subscription
from subscriptions.services.state_machine import FINAL_STATUSES
from subscriptions.services.subscriptions import cancel_subscription, live_subscriptions

# The keywords regulators and carriers require a service to honour (the first word of the SMS, any case).
# "STOP <plan code>" stops that plan only; "STOP ALL", or STOP alone, every subscription of the number.
STOP_KEYWORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"})
SMS_STOP_REASON = "STOP by SMS to the carrier"
STOP_TASK = "subscriptions.tasks.stop_by_sms"


def stop_request(text: str) -> tuple[bool, str | None]:
    """(whether the SMS is a STOP, the plan code it names or None for every plan)."""
    words = text.split()
    if not words or words[0].upper() not in STOP_KEYWORDS:
        return False, None
    if len(words) == 1 or words[0].upper() == "STOPALL" or words[1].upper() == "ALL":
        return True, None
    return True, words[1]


def handle_sms(carrier: Carrier, notification: Notification) -> str:
    """payments' callback endpoint hands over an SMS a player sent; returns what was done, for the record."""
    sms = notification.sms
    if sms is None:
        return "ignored: no SMS"
    stop, plan = stop_request(sms.text)
    if not stop:
        return "ignored: not a STOP keyword"
    try:
        number = normalize_msisdn(sms.msisdn)
    except InvalidMsisdn:
        return "ignored: the sender is not a phone number"
    live = live_subscriptions(msisdn=number, carrier=carrier)
    # "STOP <word>": that plan only when the word is the code of one of the number's plans; any other word
    # ("STOP please") stops them all.
    named = live.filter(plan__code__iexact=plan) if plan is not None else live.none()
    if plan is not None and named.exists():
        live = named
    else:
        plan = None
    ids = list(live.order_by("id").values_list("pk", flat=True))
    for subscription_id in ids:
        outbox.enqueue(STOP_TASK, queue=settings.CELERY_TASK_DEFAULT_QUEUE, subscription_id=subscription_id)
        if not outbox.runs_in_process():
            # With a broker, done right after this commit, in this request (robust: a failure is logged, the
            # callback still answered); the outbox's message is the fallback should this process die first (a
            # repeat changes nothing). Without one, the outbox's message itself runs at the commit.
            transaction.on_commit(functools.partial(stop_by_sms, subscription_id=subscription_id), robust=True)
    named_plan = f" to {plan}" if plan is not None else ""
    return f"STOP{named_plan}: {len(ids)} subscription(s) cancelled now"


def stop_by_sms(*, subscription_id: int) -> bool:
    """Cancel one subscription now for a STOP by SMS (queued by `handle_sms`); whether it was cancelled now
    (one ended meanwhile, by another STOP or the engine, is left as it is)."""
    subscription = Subscription.objects.select_related("carrier").get(pk=subscription_id)
    if subscription.status in FINAL_STATUSES:
        return False
    try:
        cancel_subscription(
            subscription=subscription,
            at_period_end=False,
            reason=SMS_STOP_REASON,
            actor=carrier_actor(subscription.carrier),
            now=timezone.now(),
        )
    except IllegalSubscriptionTransition:
        return False
    return True
