"""What every simulator shares: scenarios by MSISDN, transport faults, the SMS inbox, callbacks."""

import json
import logging
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from typing import Any

import httpx
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

logger = logging.getLogger(__name__)


class Decline(StrEnum):
    """Business outcomes a simulator can give; each protocol renders them in its own codes."""

    INSUFFICIENT_FUNDS = "insufficient_funds"
    USER_BARRED = "user_barred"
    SPENDING_LIMIT = "spending_limit"
    UNKNOWN_SUBSCRIBER = "unknown_subscriber"


class Transport(StrEnum):
    SERVER_ERROR = "5xx"
    MALFORMED = "malformed"
    TIMEOUT = "timeout"


class Callbacks(StrEnum):
    NORMAL = "normal"
    DUPLICATE = "duplicate"
    OUT_OF_ORDER = "out_of_order"
    NEVER = "never"


@dataclass(frozen=True)
class Scenario:
    decline: Decline | None = None
    transport: Transport | None = None
    callbacks: Callbacks = Callbacks.NORMAL
    # The charge never gets a final answer (processing forever).
    never_final: bool = False


# The MSISDN's last four digits pick the scenario; every other number is approved.
SCENARIOS: dict[str, Scenario] = {
    "0002": Scenario(decline=Decline.INSUFFICIENT_FUNDS),
    "0003": Scenario(decline=Decline.USER_BARRED),
    "0004": Scenario(decline=Decline.SPENDING_LIMIT),
    "0005": Scenario(never_final=True),
    "0006": Scenario(decline=Decline.UNKNOWN_SUBSCRIBER),
    "0007": Scenario(transport=Transport.SERVER_ERROR),
    "0008": Scenario(transport=Transport.MALFORMED),
    "0009": Scenario(transport=Transport.TIMEOUT),
    "0011": Scenario(callbacks=Callbacks.DUPLICATE),
    "0012": Scenario(callbacks=Callbacks.OUT_OF_ORDER),
    "0013": Scenario(callbacks=Callbacks.NEVER),
}


@dataclass
class SimulatorSettings:
    """Faults that apply to every request, changed with POST /simulators/<name>/_settings."""

    latency_ms: int = 0
    # How long a "timeout" request hangs before answering (longer than the carrier's read timeout).
    timeout_seconds: float = 3.0
    # Every request answers 503 (an outage).
    outage: bool = False
    callback_delay_ms: int = 50
    callback_max_attempts: int = 5
    # Applies to every number that has no scenario of its own.
    default_callbacks: str = Callbacks.NORMAL
    pin_length: int = 6


@dataclass
class Simulator:
    name: str
    settings: SimulatorSettings = field(default_factory=SimulatorSettings)
    lock: threading.RLock = field(default_factory=threading.RLock)
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    sms: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    # Every charge applied to a player's bill: msisdn -> [record ids]; proves nothing is charged twice.
    charges: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    callbacks_sent: list[dict[str, Any]] = field(default_factory=list)
    # Bumped by reset(): callbacks still queued from before a reset are dropped.
    generation: int = 0

    def reset(self) -> None:
        with self.lock:
            self.generation += 1
            self.settings = SimulatorSettings()
            self.records.clear()
            self.sms.clear()
            self.charges.clear()
            self.callbacks_sent.clear()

    def scenario(self, msisdn: str) -> Scenario:
        found = SCENARIOS.get(msisdn[-4:])
        if found is not None:
            return found
        return Scenario(callbacks=Callbacks(self.settings.default_callbacks))

    def new_id(self, prefix: str) -> str:
        return f"{prefix}{uuid.uuid4().hex[:20]}"

    def send_sms(self, msisdn: str, text: str) -> None:
        with self.lock:
            self.sms[msisdn].append(text)

    def new_pin(self) -> str:
        import secrets

        return "".join(secrets.choice("0123456789") for _ in range(self.settings.pin_length))

    def record_charge(self, msisdn: str, record_id: str) -> None:
        with self.lock:
            self.charges[msisdn].append(record_id)

    def transport_fault(self, msisdn: str) -> HttpResponse | None:
        """Apply latency and this number's transport fault; a response replaces the real answer."""
        if self.settings.latency_ms:
            time.sleep(self.settings.latency_ms / 1000)
        if self.settings.outage:
            return HttpResponse("Service Unavailable", status=503, content_type="text/plain")
        fault = self.scenario(msisdn).transport
        if fault == Transport.SERVER_ERROR:
            return HttpResponse("Internal Server Error", status=500, content_type="text/plain")
        if fault == Transport.TIMEOUT:
            time.sleep(self.settings.timeout_seconds)
            return HttpResponse("Gateway Timeout", status=504, content_type="text/plain")
        return None

    def malformed(self, msisdn: str) -> bool:
        return self.scenario(msisdn).transport == Transport.MALFORMED

    def deliver(self, url: str, events: Sequence[tuple[bytes, Mapping[str, str]]], msisdn: str) -> None:
        """Post callbacks in the background, each retried until answered 2xx, per the number's scenario.

        `events` are (body, headers) in the order they happened; the scenario may send them
        twice, in reverse order, or not at all.
        """
        mode = self.scenario(msisdn).callbacks
        if mode == Callbacks.NEVER or not url:
            return
        if mode == Callbacks.DUPLICATE:
            events = [event for event in events for _ in range(2)]
        elif mode == Callbacks.OUT_OF_ORDER:
            events = list(reversed(events))
        delay = self.settings.callback_delay_ms / 1000
        attempts = self.settings.callback_max_attempts
        generation = self.generation

        def run() -> None:
            time.sleep(delay)
            for body, headers in events:
                for attempt in range(attempts):
                    if self.generation != generation:
                        return
                    status = _post(url, body, headers)
                    with self.lock:
                        self.callbacks_sent.append({"url": url, "status": status, "attempt": attempt + 1})
                    if status is not None and 200 <= status < 300:
                        break
                    time.sleep(min(0.2 * 2**attempt, 2.0))

        threading.Thread(target=run, name=f"{self.name}-callbacks", daemon=True).start()


def _post(url: str, body: bytes, headers: Mapping[str, str]) -> int | None:
    try:
        return httpx.post(url, content=body, headers=dict(headers), timeout=10).status_code
    except httpx.HTTPError as exc:
        logger.info("simulator callback to %s failed: %s", url, exc)
        return None


SIMULATORS: dict[str, Simulator] = {}


def simulator(name: str) -> Simulator:
    return SIMULATORS.setdefault(name, Simulator(name=name))


View = Callable[..., HttpResponse]


def simulator_view(view: View) -> View:
    """A simulator endpoint: no CSRF (carriers are not browsers). Only routed when the sandbox is on."""
    return csrf_exempt(view)


def json_body(request: HttpRequest) -> Any:
    try:
        return json.loads(request.body or b"{}")
    except ValueError:
        return None


@simulator_view
def control_settings(request: HttpRequest, name: str) -> JsonResponse:
    """GET the settings of a simulator, or POST a JSON object of the ones to change."""
    sim = simulator(name)
    if request.method == "POST":
        changes = json_body(request)
        known = {f.name: f.type for f in fields(SimulatorSettings)}
        if not isinstance(changes, dict) or set(changes) - set(known):
            return JsonResponse({"error": f"settings are: {', '.join(known)}"}, status=400)
        with sim.lock:
            for key, value in changes.items():
                setattr(sim.settings, key, value)
    return JsonResponse(asdict(sim.settings))


@simulator_view
def control_reset(request: HttpRequest, name: str) -> JsonResponse:
    simulator(name).reset()
    return JsonResponse({"reset": name})


@simulator_view
def sms_inbox(request: HttpRequest, name: str) -> JsonResponse:
    """The test handset: the SMS a simulator sent to ?msisdn=, newest last."""
    msisdn = request.GET.get("msisdn", "")
    with simulator(name).lock:
        return JsonResponse({"msisdn": msisdn, "messages": list(simulator(name).sms.get(msisdn, []))})
