"""What every simulator shares: scenarios by MSISDN, transport faults, shared state, the SMS inbox, callbacks."""

import functools
import hashlib
import json
import logging
import os
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, fields
from enum import StrEnum
from typing import Any, TypeVar

import httpx
from django.db import DatabaseError, DataError, IntegrityError, connection, connections, transaction
from django.db.models import F, QuerySet
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from sandbox.models import SimulatorEntry, SimulatorRecord, SimulatorState, StateEncoder

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
    # A number whose answer changes over its life (a subscription's periods): its first charge is answered as
    # `decline` says (paid), each later one meets these declines in turn (None: paid), round and round.
    later: tuple[Decline | None, ...] = ()

    def decline_of(self, charge_number: int) -> Decline | None:
        """The decline met by the number's `charge_number`-th charge (1: its first)."""
        if not self.later or charge_number <= 1:
            return self.decline
        return self.later[(charge_number - 2) % len(self.later)]


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
    # Over a subscription's life: the first charge (the opt-in) is paid, then…
    "0021": Scenario(later=(Decline.INSUFFICIENT_FUNDS, None)),  # insufficient funds on every other charge
    "0022": Scenario(later=(Decline.UNKNOWN_SUBSCRIBER,)),  # ported out: unknown on every later charge
    "0023": Scenario(later=(Decline.USER_BARRED,)),  # barred from every later charge
    "0024": Scenario(later=(Decline.INSUFFICIENT_FUNDS,)),  # insufficient funds on every later charge
}
# Where a simulator keeps how many charges a number of a changing scenario has met (reset with the simulator).
CHARGES_MET = "charges-met:"


@dataclass(frozen=True)
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


# Bounds of the numeric settings: every wait a simulator makes stays bounded.
_LIMITS: dict[str, tuple[float, float]] = {
    "latency_ms": (0, 60_000),
    "timeout_seconds": (0, 60),
    "callback_delay_ms": (0, 60_000),
    "callback_max_attempts": (1, 20),
    "pin_length": (4, 10),
}


def settings_problem(changes: Any) -> str | None:
    """Why `changes` are not settings (unknown names, wrong types, out of bounds), or None."""
    known = {f.name: f.type for f in fields(SimulatorSettings)}
    if not isinstance(changes, dict) or set(changes) - set(known):
        return f"settings are: {', '.join(known)}"
    for name, value in changes.items():
        kind = known[name]
        if kind is bool:
            valid = isinstance(value, bool)
        elif kind is str:
            valid = value in set(Callbacks)
        else:
            allowed = (int,) if kind is int else (int, float)
            low, high = _LIMITS[name]
            valid = isinstance(value, allowed) and not isinstance(value, bool) and low <= value <= high
        if not valid:
            return f"{name}: {value!r} is not a valid value"
    return None


def _settings_from(stored: Mapping[str, Any]) -> SimulatorSettings:
    known = {f.name for f in fields(SimulatorSettings)}
    return SimulatorSettings(**{name: value for name, value in stored.items() if name in known})


# --- shared state -------------------------------------------------------------------------------
# A simulator's state lives in the database (sandbox.models), so that every process serving it (gunicorn
# workers, threads, a test's live server) is one carrier. A carrier's state is its own: a write made while
# the caller is inside a transaction of its own (a test's) goes on a connection of its own, committed at once.


class _Local(threading.local):
    depth = 0  # how many of the simulator's own transactions this thread is in


_local = _Local()
# The settings and generation of each simulator read during the current request: one query a request.
_request_states: ContextVar[dict[str, tuple[SimulatorSettings, int]] | None] = ContextVar(
    "simulator_request_states", default=None
)
_used = threading.Event()  # set once a simulator of this process used its tables

T = TypeVar("T")


def used() -> bool:
    """Whether a simulator of this process has read or written its tables (then a reset has work to do)."""
    return _used.is_set()


@contextmanager
def _own_transaction() -> Iterator[None]:
    _used.set()
    _local.depth = _local.depth + 1
    try:
        with transaction.atomic():
            yield
    finally:
        _local.depth -= 1


def _detached(work: Callable[[], T]) -> T:
    """`work()`, committed on its own: on a connection of its own when the caller's is inside a transaction."""
    _used.set()
    if not connection.in_atomic_block or _local.depth:
        return work()
    outcome: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(work())
        except BaseException as exc:  # handed to the caller
            failure.append(exc)
        finally:
            connections.close_all()

    thread = threading.Thread(target=run, name="simulator-state", daemon=True)
    thread.start()
    thread.join(timeout=30)
    if thread.is_alive():
        raise TimeoutError("the simulator's state was not written within 30 s")
    if failure:
        raise failure[0]
    return outcome[0]


# Records under this prefix are configuration, not state (a carrier's client registry): a reset keeps them.
KEPT = "kept:"


def _key(key: str) -> str:
    """Keys hold client-chosen parts (correlators, reference codes): a long one keeps its start and a digest."""
    if len(key) <= 200:
        return key
    return key[:120] + "#" + hashlib.sha256(key.encode()).hexdigest()


def _encoded(data: Any) -> str:
    return json.dumps(data, cls=StateEncoder, sort_keys=True)


class Records:
    """A simulator's records by key (tokens, payments, reservations, refunds, idempotency keys), shared by every
    process. A record read with `get` is a copy: change one with `locked`, which holds its row until the block
    ends and saves what the block changed."""

    def __init__(self, simulator: str) -> None:
        self.simulator = simulator

    def _rows(self) -> QuerySet[SimulatorRecord]:
        _used.set()
        return SimulatorRecord.objects.filter(simulator=self.simulator)

    def get(self, key: str) -> dict[str, Any] | None:
        found: dict[str, Any] | None = self._rows().filter(key=_key(key)).values_list("data", flat=True).first()
        return found

    def __getitem__(self, key: str) -> dict[str, Any]:
        found = self.get(key)
        if found is None:
            raise KeyError(key)
        return found

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._rows().filter(key=_key(key)).exists()

    def add(self, key: str, record: dict[str, Any]) -> bool:
        """Keep `record` under `key` unless the key is taken (by any process): whether it was added."""

        def work() -> bool:
            try:
                with transaction.atomic():
                    SimulatorRecord.objects.create(simulator=self.simulator, key=_key(key), data=record)
            except IntegrityError:
                return False
            return True

        return _detached(work)

    def put(self, key: str, record: dict[str, Any]) -> None:
        """Keep `record` under `key`, replacing what was there."""

        def work() -> None:
            SimulatorRecord.objects.bulk_create(
                [SimulatorRecord(simulator=self.simulator, key=_key(key), data=record)],
                update_conflicts=True,
                unique_fields=["simulator", "key"],
                update_fields=["data"],
            )

        _detached(work)

    __setitem__ = put

    @contextmanager
    def locked(self, key: str) -> Iterator[dict[str, Any] | None]:
        """The record under `key` (None if there is none), its row locked until the block ends: a request on
        another process waits for it. What the block changed in the record is saved when it ends. Not inside
        a transaction of the caller's (the lock would last as long as it): use `update` there."""
        if connection.in_atomic_block and not _local.depth:
            raise RuntimeError("a simulator's record is not locked inside the caller's transaction: use update()")
        with _own_transaction():
            row = self._rows().select_for_update().filter(key=_key(key)).first()
            if row is None:
                yield None
                return
            before = _encoded(row.data)
            yield row.data
            if _encoded(row.data) != before:
                row.save(update_fields=["data"])

    def update(self, key: str, **changes: Any) -> bool:
        """Change some fields of the record under `key`, under its lock: whether there was one."""

        def work() -> bool:
            with self.locked(key) as record:
                if record is None:
                    return False
                record.update(changes)
                return True

        return _detached(work)

    def find(self, prefix: str = "", **values: Any) -> list[dict[str, Any]]:
        """The records whose key starts with `prefix` and whose fields (`a__b` for a nested one) hold these
        values (or meet a lookup: `due__lte=…`; a record without the field meets none), oldest first."""
        rows = self._rows()
        if prefix:
            rows = rows.filter(key__startswith=prefix)
        rows = rows.filter(**{f"data__{name}": value for name, value in values.items()})
        return list(rows.order_by("id").values_list("data", flat=True))

    def count(self, prefix: str = "") -> int:
        return self._rows().filter(key__startswith=prefix).count()

    def delete(self, prefix: str = "") -> None:
        _detached(lambda: SimulatorRecord.objects.filter(simulator=self.simulator, key__startswith=prefix).delete())


class Log(Mapping[str, list[Any]]):
    """What a simulator did by subject, in order: the SMS each number received, the charges on its bill.
    Like a defaultdict: a subject with nothing gives [] (but is not `in` the log)."""

    def __init__(self, simulator: str, kind: SimulatorEntry.Kind) -> None:
        self.simulator = simulator
        self.kind = kind

    def _rows(self) -> QuerySet[SimulatorEntry]:
        _used.set()
        return SimulatorEntry.objects.filter(simulator=self.simulator, kind=self.kind)

    def append(self, subject: str, value: Any) -> None:
        _detached(
            lambda: SimulatorEntry.objects.create(simulator=self.simulator, kind=self.kind, subject=subject, data=value)
        )

    def __getitem__(self, subject: str) -> list[Any]:
        return list(self._rows().filter(subject=subject).order_by("id").values_list("data", flat=True))

    def __contains__(self, subject: object) -> bool:
        return isinstance(subject, str) and self._rows().filter(subject=subject).exists()

    def __iter__(self) -> Iterator[str]:
        return iter(self._rows().order_by("subject").values_list("subject", flat=True).distinct())

    def __len__(self) -> int:
        return self._rows().values("subject").distinct().count()


class Simulator:
    """One simulated carrier (or reference-data API). The object holds no state: every process that serves the
    simulator reads and writes the same tables, so any of them answers as the same carrier."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.records = Records(name)
        self.sms = Log(name, SimulatorEntry.Kind.SMS)
        # Every charge applied to a player's bill: msisdn -> [record ids]; proves nothing is charged twice.
        self.charges = Log(name, SimulatorEntry.Kind.CHARGE)

    def __repr__(self) -> str:
        return f"Simulator({self.name!r})"

    def _state(self, *, fresh: bool = False) -> tuple[SimulatorSettings, int]:
        memo = _request_states.get()
        if memo is not None and not fresh and self.name in memo:
            return memo[self.name]
        _used.set()
        row = SimulatorState.objects.filter(name=self.name).values_list("settings", "generation").first()
        state = (_settings_from(row[0]), row[1]) if row else (SimulatorSettings(), 0)
        if memo is not None:
            memo[self.name] = state
        return state

    @property
    def settings(self) -> SimulatorSettings:
        """The settings in force (read once a request); change them with `configure`."""
        return self._state()[0]

    @property
    def generation(self) -> int:
        """Bumped by reset(): callbacks still queued from before a reset are dropped."""
        return self._state(fresh=True)[1]

    def configure(self, **changes: Any) -> SimulatorSettings:
        """Change some settings for every process serving this simulator (ValueError for invalid ones)."""
        problem = settings_problem(changes)
        if problem is not None:
            raise ValueError(problem)

        def work() -> tuple[dict[str, Any], int]:
            with _own_transaction():
                state = _locked_state(self.name)
                state.settings = {**state.settings, **changes}
                state.save(update_fields=["settings"])
                return state.settings, state.generation

        stored, generation = _detached(work)
        settings = _settings_from(stored)
        memo = _request_states.get()
        if memo is not None:
            memo[self.name] = (settings, generation)
        return settings

    def reset(self) -> None:
        """Forget everything, for every process: records (but the `KEPT` ones), SMS, charges, callbacks,
        settings; callbacks still queued anywhere are dropped."""
        reset_all([self.name])

    def scenario(self, msisdn: str) -> Scenario:
        found = SCENARIOS.get(msisdn[-4:])
        if found is not None:
            return found
        return Scenario(callbacks=Callbacks(self.settings.default_callbacks))

    def charge_decline(self, msisdn: str) -> Decline | None:
        """The decline a charge to `msisdn` meets now (None: paid). A number whose answer changes over its life
        (`Scenario.later`) counts this charge, for every process, and meets what its place in that life says;
        a simulator asks once per charge (not for a repeat of a request it already answered)."""
        scenario = self.scenario(msisdn)
        if not scenario.later:
            return scenario.decline
        key = CHARGES_MET + msisdn
        self.records.add(key, {"count": 0})

        def work() -> int:
            with self.records.locked(key) as record:
                assert record is not None  # added above; a reset meanwhile is the test's own doing
                record["count"] = int(record["count"]) + 1
                return int(record["count"])

        return scenario.decline_of(_detached(work))

    def next_decline(self, msisdn: str) -> Decline | None:
        """The decline the number's next charge would meet, without counting one: for a step before the charge
        (a payment prepared, more money on a reservation)."""
        return self._decline_after(msisdn, 1)

    def current_decline(self, msisdn: str) -> Decline | None:
        """What the number is now, as its last charge found it (before any, as its first will): for what is not
        a charge (an SMS delivered, a refund)."""
        return self._decline_after(msisdn, 0)

    def _decline_after(self, msisdn: str, ahead: int) -> Decline | None:
        scenario = self.scenario(msisdn)
        if not scenario.later:
            return scenario.decline
        met = self.records.get(CHARGES_MET + msisdn) or {}
        return scenario.decline_of(max(int(met.get("count", 0)) + ahead, 1))

    def new_id(self, prefix: str) -> str:
        return f"{prefix}{uuid.uuid4().hex[:20]}"

    def send_sms(self, msisdn: str, text: str) -> None:
        self.sms.append(msisdn, text)

    def new_pin(self) -> str:
        return "".join(secrets.choice("0123456789") for _ in range(self.settings.pin_length))

    def record_charge(self, msisdn: str, record_id: str) -> None:
        self.charges.append(msisdn, record_id)

    @property
    def callbacks_sent(self) -> list[dict[str, Any]]:
        """Every callback attempt, in order: {"url", "status", "attempt"}."""
        _used.set()
        rows = SimulatorEntry.objects.filter(simulator=self.name, kind=SimulatorEntry.Kind.CALLBACK)
        return list(rows.order_by("id").values_list("data", flat=True))

    def transport_fault(self, msisdn: str) -> HttpResponse | None:
        """Apply latency and this number's transport fault; a response replaces the real answer."""
        settings = self.settings
        if settings.latency_ms:
            time.sleep(settings.latency_ms / 1000)
        if settings.outage:
            return HttpResponse("Service Unavailable", status=503, content_type="text/plain")
        fault = self.scenario(msisdn).transport
        if fault == Transport.SERVER_ERROR:
            return HttpResponse("Internal Server Error", status=500, content_type="text/plain")
        if fault == Transport.TIMEOUT:
            time.sleep(settings.timeout_seconds)
            return HttpResponse("Gateway Timeout", status=504, content_type="text/plain")
        return None

    def malformed(self, msisdn: str) -> bool:
        return self.scenario(msisdn).transport == Transport.MALFORMED

    def deliver(self, url: str, events: Sequence[tuple[bytes, Mapping[str, str]]], msisdn: str) -> None:
        """Post callbacks in the background, per the number's scenario: each tried up to `callback_max_attempts`
        times until answered 2xx, then given up (a lost callback, which the status call still lists).

        `events` are (body, headers) in the order they happened; the scenario may send them
        twice, in reverse order, or not at all. The thread runs in this process; a reset made by any
        process stops it (it reads the shared generation before each attempt).
        """
        mode = self.scenario(msisdn).callbacks
        if mode == Callbacks.NEVER or not url:
            return
        if mode == Callbacks.DUPLICATE:
            events = [event for event in events for _ in range(2)]
        elif mode == Callbacks.OUT_OF_ORDER:
            events = list(reversed(events))
        settings, generation = self._state()
        delay = settings.callback_delay_ms / 1000
        attempts = settings.callback_max_attempts
        log = Log(self.name, SimulatorEntry.Kind.CALLBACK)

        def run() -> None:
            try:
                time.sleep(delay)
                for body, headers in events:
                    for attempt in range(attempts):
                        if self._state(fresh=True)[1] != generation:
                            return
                        status = _post(url, body, headers)
                        log.append(url, {"url": url, "status": status, "attempt": attempt + 1})
                        if status is not None and 200 <= status < 300:
                            break
                        time.sleep(min(0.2 * 2**attempt, 2.0))
            except DatabaseError as exc:
                logger.info("simulator %s stopped its callbacks: %s", self.name, exc)
            finally:
                connections.close_all()

        threading.Thread(target=run, name=f"{self.name}-callbacks", daemon=True).start()


def _locked_state(name: str) -> SimulatorState:
    state, _ = SimulatorState.objects.select_for_update().get_or_create(name=name)
    return state


def reset_all(names: Sequence[str] = (), *, kept_too: bool = False) -> None:
    """Reset these simulators (all of them by default) for every process: a new generation, default settings,
    no records (but the `KEPT` ones, unless `kept_too`), SMS, charges or callbacks."""
    chosen = list(names) or sorted(NAMES | set(SIMULATORS))
    records = SimulatorRecord.objects.filter(simulator__in=chosen)
    if not kept_too:
        records = records.exclude(key__startswith=KEPT)

    def work() -> None:
        with _own_transaction():
            SimulatorState.objects.bulk_create([SimulatorState(name=name) for name in chosen], ignore_conflicts=True)
            SimulatorState.objects.filter(name__in=chosen).update(generation=F("generation") + 1, settings={})
            records.delete()
            SimulatorEntry.objects.filter(simulator__in=chosen).delete()

    _detached(work)
    if not names:
        _used.clear()  # nothing left to reset
    memo = _request_states.get()
    if memo is not None:
        for name in chosen:
            memo.pop(name, None)


def _post(url: str, body: bytes, headers: Mapping[str, str]) -> int | None:
    try:
        return httpx.post(url, content=body, headers=dict(headers), timeout=10).status_code
    except httpx.HTTPError as exc:
        logger.info("simulator callback to %s failed: %s", url, exc)
        return None


# The simulators served under /simulators/<name>/.
NAMES = frozenset({"camara", "parlayx", "aggregator", "fx"})
SIMULATORS: dict[str, Simulator] = {}


def simulator(name: str) -> Simulator:
    return SIMULATORS.setdefault(name, Simulator(name=name))


View = Callable[..., HttpResponse]


def simulator_view(view: View) -> View:
    """A simulator endpoint: no CSRF (carriers are not browsers); its settings read once a request; the answer
    says which process gave it (X-Simulator-Process). Only routed when the sandbox is on."""

    @functools.wraps(view)
    def serve(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        scope = _request_states.set({})
        try:
            response = view(request, *args, **kwargs)
        except (DataError, UnicodeEncodeError):
            # An id or a field the database cannot hold (a NUL, a lone surrogate): refused, never a 500.
            response = JsonResponse({"error": "the request holds a NUL or a lone surrogate"}, status=400)
        finally:
            _request_states.reset(scope)
        response[PROCESS_HEADER] = str(os.getpid())
        return response

    return csrf_exempt(serve)


PROCESS_HEADER = "X-Simulator-Process"


def json_body(request: HttpRequest) -> Any:
    try:
        return json.loads(request.body or b"{}")
    except ValueError:
        return None


def _unknown(name: str) -> JsonResponse | None:
    if name in NAMES:
        return None
    return JsonResponse({"error": f"no simulator {name}; simulators are: {', '.join(sorted(NAMES))}"}, status=404)


@simulator_view
def control_settings(request: HttpRequest, name: str) -> JsonResponse:
    """GET the settings of a simulator, or POST a JSON object of the ones to change."""
    if (unknown := _unknown(name)) is not None:
        return unknown
    sim = simulator(name)
    if request.method == "POST":
        changes = json_body(request)
        problem = settings_problem(changes)
        if problem is not None:
            return JsonResponse({"error": problem}, status=400)
        return JsonResponse(asdict(sim.configure(**changes)))
    return JsonResponse(asdict(sim.settings))


@simulator_view
def control_reset(request: HttpRequest, name: str) -> JsonResponse:
    if (unknown := _unknown(name)) is not None:
        return unknown
    simulator(name).reset()
    return JsonResponse({"reset": name})


@simulator_view
def sms_inbox(request: HttpRequest, name: str) -> JsonResponse:
    """The test handset: the SMS a simulator sent to ?msisdn=, newest last."""
    if (unknown := _unknown(name)) is not None:
        return unknown
    msisdn = request.GET.get("msisdn", "")
    return JsonResponse({"msisdn": msisdn, "messages": simulator(name).sms[msisdn]})


@simulator_view
def charges_ledger(request: HttpRequest, name: str) -> JsonResponse:
    """The bill of ?msisdn=: the id of every charge applied to it, oldest first (each charge appears once)."""
    if (unknown := _unknown(name)) is not None:
        return unknown
    msisdn = request.GET.get("msisdn", "")
    return JsonResponse({"msisdn": msisdn, "charges": simulator(name).charges[msisdn]})
