"""Demo traffic: game backends and their players against a running PlayPay, over HTTP.

Each player walks a store journey (funnel events), and most of them pay on one of the demo
carriers: the PIN flow (PIN 1234 on the sandbox carriers, the PIN from the simulator's SMS
inbox on the others) or one click. Some numbers are chosen to be declined (the simulators'
scenarios by the last four digits) and some charges are refunded through the API. A share of the paying
players subscribes to the demo app's VIP pass instead, on a carrier that takes subscriptions: the double
opt-in through the subscription API, confirmed by the PIN as a payment is, each carrier in turn. Their next
periods are charged by the renewal engine, or on the aggregator's carrier by the aggregator's own schedule (both
periodic tasks, run by `run_scheduler` in the embedded default), and told by its signed callbacks.
"""

import random
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from carriers.models import Protocol
from payments.services.state_machine import WEBHOOK_STATUSES
from sandbox.adapter import TEST_PIN
from sandbox.demo import DEMO_CARRIERS, DEMO_PLAN, DemoCarrier

# Last four digits every demo carrier declines (the simulators and the sandbox alike).
DECLINED_ENDINGS = ["0002", "0003", "0004"]
# Store steps before the purchase; a share of the players leaves after each one.
STORE_STEPS = ["store_opened", "item_selected", "msisdn_entered"]
LEAVE_AFTER_STEP = 0.12
TIMEOUT = httpx.Timeout(10.0, connect=3.0)


class TrafficError(Exception):
    """The running server cannot be played against (unreachable, or the key is refused)."""


@dataclass(frozen=True)
class TrafficPlan:
    base_url: str
    api_key: str
    duration_seconds: float = 60.0
    players_per_second: float = 2.0
    max_players: int | None = None
    # Shares of the paying players whose number is declined, and of the succeeded payments refunded;
    # both are spread evenly (every n-th), so a short run still has some.
    failure_share: float = 0.15
    refund_share: float = 0.2
    # Share of the paying players who subscribe to the demo plan instead of buying (spread evenly as well).
    subscription_share: float = 0.2
    seed: int | None = None


@dataclass
class TrafficSummary:
    players: int = 0
    funnel_events: int = 0
    payments: Counter[str] = field(default_factory=Counter)
    flows: Counter[str] = field(default_factory=Counter)
    refunds: int = 0
    subscriptions: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    payment_ids: list[str] = field(default_factory=list)
    subscription_ids: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        statuses = ", ".join(f"{count} {status}" for status, count in sorted(self.payments.items())) or "none"
        flows = ", ".join(f"{count} {flow}" for flow, count in sorted(self.flows.items())) or "none"
        errors = ", ".join(f"{what}: {count}" for what, count in self.errors.most_common()) or "none"
        subscribed = ", ".join(f"{count} {status}" for status, count in sorted(self.subscriptions.items())) or "none"
        return [
            f"players: {self.players}",
            f"funnel events accepted: {self.funnel_events}",
            f"payments: {sum(self.payments.values())} ({statuses}); flows: {flows}",
            f"refunds: {self.refunds}",
            f"subscriptions: {sum(self.subscriptions.values())} ({subscribed})",
            f"errors: {errors}",
        ]


def _every(share: float, index: int) -> bool:
    """True for an even spread of `share` of the indexes 0, 1, 2, …"""
    return int((index + 1) * share) > int(index * share)


class DemoTraffic:
    def __init__(
        self, plan: TrafficPlan, *, client: httpx.Client | None = None, log: Callable[[str], None] | None = None
    ) -> None:
        self.plan = plan
        self.client = client or httpx.Client(base_url=plan.base_url.rstrip("/"), timeout=TIMEOUT)
        self.client.headers["Authorization"] = f"Api-Key {plan.api_key}"
        self.log = log or (lambda message: None)
        self.random = random.Random(plan.seed)  # noqa: S311 - demo data, not security
        self.summary = TrafficSummary()
        self.paying = 0
        self.subscribed = 0
        self.bought = 0
        self.succeeded = 0
        self.offers: list[tuple[DemoCarrier, str]] = []
        self.plan_carriers: list[DemoCarrier] = []

    # --- the run -------------------------------------------------------------------------------
    def run(self) -> TrafficSummary:
        self.offers = self._offers()
        # The demo plan is offered on the demo carriers that take subscriptions (seed_demo).
        offered = {demo.slug for demo, _ in self.offers}
        self.plan_carriers = [demo for demo in DEMO_CARRIERS if demo.subscriptions and demo.slug in offered]
        started = time.monotonic()
        interval = 1.0 / self.plan.players_per_second if self.plan.players_per_second > 0 else 0.0
        while time.monotonic() - started < self.plan.duration_seconds:
            if self.plan.max_players is not None and self.summary.players >= self.plan.max_players:
                break
            self._play(self.summary.players)
            self.summary.players += 1
            next_start = started + self.summary.players * interval
            time.sleep(max(0.0, min(next_start, started + self.plan.duration_seconds) - time.monotonic()))
        self._settle()
        return self.summary

    def _offers(self) -> list[tuple[DemoCarrier, str]]:
        """The demo carriers' price points the server offers to this app."""
        response = self._call("GET", "/api/v1/price-points/", params={"limit": 1000})
        if response is None or response.status_code in (401, 403):
            raise TrafficError(f"the API refused the key or did not answer ({_status(response)})")
        offered = {(item["carrier"], item["code"]) for item in response.json()["results"]}
        offers = [(demo, code) for demo in DEMO_CARRIERS for code, _ in demo.prices if (demo.slug, code) in offered]
        if not offers:
            raise TrafficError("the server offers none of the demo carriers' price points: run seed_demo first")
        return offers

    def _play(self, index: int) -> None:
        journey = f"demo-{uuid.uuid4().hex[:16]}"
        player = f"demo-player-{self.random.randrange(1, 500)}"
        steps = []
        for step in STORE_STEPS:
            steps.append(step)
            if self.random.random() < LEAVE_AFTER_STEP:
                break
        self._funnel(journey, player, steps)
        if steps != STORE_STEPS:
            return  # left the store before paying
        subscribes = bool(self.plan_carriers) and _every(self.plan.subscription_share, self.paying)
        self.paying += 1
        # Declines are spread over the subscribers and over the buyers alike.
        declined = _every(self.plan.failure_share, self.subscribed if subscribes else self.bought)
        if subscribes:
            self.subscribed += 1
            # Each carrier in turn: a short run has subscribers on every one, the aggregator's included.
            carrier = self.plan_carriers[(self.subscribed - 1) % len(self.plan_carriers)]
            self._subscribe(carrier, player, journey, declined)
            return
        self.bought += 1
        demo, price_point = self.random.choice(self.offers)
        flow = "one_click" if demo.one_click and self.random.random() < 0.5 else "pin"
        payment = self._pay(demo, price_point, flow, player, journey, declined)
        if payment is not None and payment["status"] == "succeeded":
            if _every(self.plan.refund_share, self.succeeded):
                self._refund(payment)
            self.succeeded += 1

    # --- one player ----------------------------------------------------------------------------
    def _funnel(self, journey: str, player: str, steps: list[str]) -> None:
        now = datetime.now(UTC).isoformat()
        events = [
            {
                "event_id": f"{journey}-{step}",
                "journey_id": journey,
                "step": step,
                "occurred_at": now,
                "user_ref": player,
                "properties": {"source": "demo_traffic"},
            }
            for step in steps
        ]
        response = self._call("POST", "/api/v1/funnel/events/", json={"events": events})
        if response is not None and response.status_code == 200:
            self.summary.funnel_events += int(response.json()["accepted"])
        else:
            self.summary.errors[f"funnel events: {_status(response)}"] += 1

    def _pay(
        self, demo: DemoCarrier, price_point: str, flow: str, player: str, journey: str, declined: bool
    ) -> dict[str, Any] | None:
        msisdn = self._number(demo, declined)
        body: dict[str, Any] = {"user_ref": player, "msisdn": msisdn, "price_point": price_point}
        body |= {"carrier": demo.slug, "flow": flow, "journey_id": journey, "metadata": {"source": "demo_traffic"}}
        response = self._call("POST", "/api/v1/payments/", json=body, headers={"Idempotency-Key": journey})
        if response is None or response.status_code != 201:
            self.summary.errors[f"create payment: {_status(response)}"] += 1
            return None
        payment: dict[str, Any] = response.json()
        self.summary.payment_ids.append(payment["id"])
        self.summary.flows[flow] += 1
        payment = self._with_pin(demo, msisdn, payment, "/api/v1/payments/")
        self.log(f"{payment['id']} {demo.slug} {flow} {msisdn}: {payment['status']}")
        return payment

    def _subscribe(self, demo: DemoCarrier, player: str, journey: str, declined: bool) -> dict[str, Any] | None:
        """The double opt-in as a game makes it: open the subscription, then confirm it with the PIN."""
        msisdn = self._number(demo, declined)
        body: dict[str, Any] = {"user_ref": player, "msisdn": msisdn, "plan": DEMO_PLAN, "carrier": demo.slug}
        body |= {"journey_id": journey, "metadata": {"source": "demo_traffic"}}
        response = self._call("POST", "/api/v1/subscriptions/", json=body, headers={"Idempotency-Key": journey})
        if response is None or response.status_code != 201:
            self.summary.errors[f"subscribe: {_status(response)}"] += 1
            return None
        subscription: dict[str, Any] = response.json()
        self.summary.subscription_ids.append(subscription["id"])
        subscription = self._with_pin(demo, msisdn, subscription, "/api/v1/subscriptions/")
        self.log(f"subscription {subscription['id']} {demo.slug} {msisdn}: {subscription['status']}")
        return subscription

    def _with_pin(self, demo: DemoCarrier, msisdn: str, resource: dict[str, Any], path: str) -> dict[str, Any]:
        """A payment or a subscription (under `path`) once its PIN, if it asks for one, is confirmed."""
        resource = self._while_waiting(resource, path)
        if resource["next_action"]["type"] != "enter_pin":
            return resource
        pin = self._pin(demo, msisdn)
        if pin is None:
            self.summary.errors["no PIN in the simulator's SMS inbox"] += 1
            return resource
        confirmed = self._call("POST", f"{path}{resource['id']}/confirm/", json={"pin": pin})
        if confirmed is None or confirmed.status_code not in (200, 202):
            self.summary.errors[f"confirm PIN: {_status(confirmed)}"] += 1
            return resource
        # 202: the carrier checks the PIN on its queue; the player waits for the verdict.
        return self._while_waiting(confirmed.json(), path)

    def _while_waiting(self, resource: dict[str, Any], path: str, seconds: float = 5.0) -> dict[str, Any]:
        """An asynchronous carrier answers by callback: the player waits a little for the PIN SMS."""
        deadline = time.monotonic() + seconds
        while resource["next_action"]["type"] == "wait" and time.monotonic() < deadline:
            time.sleep(0.2)
            response = self._call("GET", f"{path}{resource['id']}/")
            if response is None or response.status_code != 200:
                break
            resource = response.json()
        return resource

    def _number(self, demo: DemoCarrier, declined: bool) -> str:
        # Spain's mobiles (+34 6…, 11 digits) route to parlayx-es by country; UK ones have 12 digits.
        prefix = demo.prefixes[0] if demo.prefixes else "346"
        digits = 12 if prefix.startswith("44") else 11
        # Endings from 0020 up are approved: every scenario of the simulators is below.
        ending = self.random.choice(DECLINED_ENDINGS) if declined else f"{self.random.randrange(20, 10_000):04d}"
        middle = "".join(str(self.random.randrange(10)) for _ in range(digits - len(prefix) - len(ending)))
        return f"+{prefix}{middle}{ending}"

    def _pin(self, demo: DemoCarrier, msisdn: str) -> str | None:
        if demo.protocol == Protocol.SANDBOX:
            return TEST_PIN
        inbox = self._call("GET", f"/simulators/{demo.protocol}/_sms", params={"msisdn": msisdn})
        if inbox is None or inbox.status_code != 200 or not inbox.json()["messages"]:
            return None
        # The code, not the digits of what it confirms (a price, a product) that the message may state after it.
        found = re.findall(r"code is (\d{4,10})", inbox.json()["messages"][-1])
        return found[-1] if found else None

    def _refund(self, payment: dict[str, Any]) -> None:
        amount = payment["amount_minor"] if self.random.random() < 0.5 else max(1, payment["amount_minor"] // 2)
        response = self._call(
            "POST",
            f"/api/v1/payments/{payment['id']}/refunds/",
            json={"amount_minor": amount, "reason": "demo: the player asked for their money back"},
            headers={"Idempotency-Key": f"refund-{payment['id']}"},
        )
        if response is not None and response.status_code == 201:
            self.summary.refunds += 1
        else:
            self.summary.errors[f"refund: {_status(response)}"] += 1

    # --- the end -------------------------------------------------------------------------------
    def _settle(self, rounds: int = 10) -> None:
        """Counts each payment in its latest state, giving asynchronous carriers a few seconds to answer."""
        latest: dict[str, str] = {}
        for attempt in range(rounds):
            for payment_id in self.summary.payment_ids:
                if latest.get(payment_id) in WEBHOOK_STATUSES:
                    continue
                response = self._call("GET", f"/api/v1/payments/{payment_id}/")
                if response is not None and response.status_code == 200:
                    latest[payment_id] = response.json()["status"]
            if all(latest.get(payment_id) in WEBHOOK_STATUSES for payment_id in self.summary.payment_ids):
                break
            if attempt < rounds - 1:
                time.sleep(0.5)
        self.summary.payments = Counter(latest.get(payment_id, "unknown") for payment_id in self.summary.payment_ids)
        opted: dict[str, str] = {}
        for attempt in range(rounds):
            for subscription_id in self.summary.subscription_ids:
                if opted.get(subscription_id, "pending_opt_in") != "pending_opt_in":
                    continue
                response = self._call("GET", f"/api/v1/subscriptions/{subscription_id}/")
                if response is not None and response.status_code == 200:
                    opted[subscription_id] = response.json()["status"]
            if "pending_opt_in" not in opted.values() or attempt == rounds - 1:
                break
            time.sleep(0.5)
        self.summary.subscriptions = Counter(opted.get(sid, "unknown") for sid in self.summary.subscription_ids)

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response | None:
        try:
            return self.client.request(method, path, **kwargs)
        except httpx.HTTPError as error:
            self.summary.errors[type(error).__name__] += 1
            return None


def _status(response: httpx.Response | None) -> str:
    return "no answer" if response is None else f"HTTP {response.status_code}"


def wait_until_up(base_url: str, *, seconds: float) -> None:
    """Waits for the server's health check to answer, for at most `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            if httpx.get(f"{base_url.rstrip('/')}/healthz", timeout=TIMEOUT).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() >= deadline:
            raise TrafficError(f"no PlayPay answering at {base_url}")
        time.sleep(0.5)


def run_demo_traffic(plan: TrafficPlan, *, log: Callable[[str], None] | None = None) -> TrafficSummary:
    traffic = DemoTraffic(plan, log=log)
    try:
        return traffic.run()
    finally:
        traffic.client.close()
