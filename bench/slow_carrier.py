"""Benchmark: one slow carrier does not slow the rest of the API.

It runs the production topology on this machine: gunicorn serving the app (several workers, as
`gunicorn.conf.py` configures them, DEBUG=false), a carrier worker for the slow carrier's queue and one
for the other carriers' queues, a Celery worker for the default queues, Redis as the broker, PostgreSQL;
the carrier simulators in a separate single-worker gunicorn (64 threads). The simulators keep their
state in the database, shared by every process serving them (the deployment smoke test serves them
from two workers). Then it drives the same mixed open-loop load twice:

* phase 1, every carrier healthy;
* phase 2, the CAMARA carrier's simulator answering every request after 15 s (`--latency-ms`), far
  over that carrier's read timeout (10 s).

The load: PIN confirms and payment creates on the CAMARA carrier (the PINs read from the simulator's
SMS inbox for payments created just before the phase), and endpoints that have nothing to do with that
carrier: `GET /api/v1/price-points/`, `GET /api/v1/payments/<id>/`, and payment creates on a healthy
carrier. Latency is measured from each request's scheduled send time (no coordinated omission).

It prints, per phase, p50/p99 of the unrelated endpoints and the ratio phase 2 / phase 1, the confirm
answer times (at most about PIN_CONFIRM_WAIT_MS: a confirm never waits for the carrier) and how many
were answered 200 (verdict within the wait) or 202 (checked on the carrier's queue), and what became of
the confirmed payments. Exit status 0 when unrelated p99 stayed within `--max-ratio` of phase 1's (or
within 25 ms of it) and every confirm answered within the wait plus 1 s, 1 when not, 2 when the setup
failed.

    python bench/slow_carrier.py [--duration 30] [--workers 4] [--latency-ms 15000]

Needs PostgreSQL (`--pg-url`) and Redis (`--broker-url`, `--cache-url`); see bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from harness import (
    HOST,
    REPO_ROOT,
    REQUEST_TIMEOUT_S,
    ConnectionPool,
    SetupError,
    app_env,
    db_url,
    drop_database,
    free_port,
    log,
    manage,
    percentile,
    recreate_database,
    run_bench,
    server_errors,
)

try:
    import httpx
    import psycopg
    import redis
except ImportError:
    sys.exit("bench/slow_carrier.py needs the project's dependencies: activate its virtualenv first")

SLOW_CARRIER = "camara-gb"  # seed_demo's CAMARA carrier, numbers +4477…
HEALTHY_CARRIER = "sandbox-gb-alpha"  # seed_demo's in-process carrier, numbers +4474…
OTHER_CARRIERS = "sandbox-gb-alpha,sandbox-gb-beta,aggregator-gb,parlayx-es"
PRICE_POINTS = "/api/v1/price-points/"
UNRELATED = ("price points", "payment read", "create (healthy carrier)")


# --- Processes ----------------------------------------------------------------------------------


class Processes:
    """Started in their own sessions, logs in `log_dir`; all stopped (SIGTERM, then SIGKILL) on exit."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        output = (self.log_dir / f"{name}.log").open("wb")
        process = subprocess.Popen(
            argv, cwd=REPO_ROOT, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.started.append((name, process, output))
        return process

    def check_running(self) -> None:
        for name, process, _ in self.started:
            if process.poll() is not None:
                tail = "\n".join((self.log_dir / f"{name}.log").read_text(errors="replace").splitlines()[-30:])
                raise SetupError(f"{name} exited with {process.returncode}:\n{tail}")

    def stop_all(self) -> None:
        for _, process, _ in self.started:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for _, process, output in self.started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(deadline - time.monotonic(), 0.1))
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)  # what is left of its group
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
            output.close()


def gunicorn(port: int, control_socket: Path, *options: str) -> list[str]:
    # gunicorn's control socket defaults to one path in $HOME: each server here gets its own.
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "playpay.wsgi:application",
        "--bind",
        f"{HOST}:{port}",
        "--control-socket",
        str(control_socket),
        "--timeout",
        "60",
        *options,
    ]


def wait_until(what: str, probe: Any, processes: Processes, timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        processes.check_running()
        with contextlib.suppress(httpx.HTTPError):
            found = probe()
            if found:
                return found
        time.sleep(0.2)
    raise SetupError(f"timed out waiting for {what}")


# --- The API, for the setup (plain httpx) ---------------------------------------------------------


@dataclass
class Api:
    base: str
    key: str
    simulators: str

    def headers(self, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Api-Key {self.key}", **extra}

    def create(self, msisdn: str, idempotency_key: str) -> str:
        body = {"user_ref": "bench", "msisdn": msisdn, "price_point": "gems-100"}
        response = httpx.post(
            f"{self.base}/api/v1/payments/",
            json=body,
            headers=self.headers(**{"Idempotency-Key": idempotency_key}),
            timeout=REQUEST_TIMEOUT_S,
        )
        if response.status_code != 201:
            raise SetupError(f"creating a payment for {msisdn} got {response.status_code}: {response.text[:300]}")
        return str(response.json()["id"])

    def status(self, payment_id: str) -> str:
        response = httpx.get(f"{self.base}/api/v1/payments/{payment_id}/", headers=self.headers(), timeout=10)
        return str(response.json()["status"]) if response.status_code == 200 else ""

    def pin(self, msisdn: str) -> str | None:
        inbox = httpx.get(f"{self.simulators}/simulators/camara/_sms", params={"msisdn": msisdn}, timeout=10)
        found = re.findall(r"\b(\d{4,8})\b", json.dumps(inbox.json().get("messages", [])))
        return found[-1] if found else None

    def set_latency(self, latency_ms: int) -> None:
        response = httpx.post(
            f"{self.simulators}/simulators/camara/_settings", json={"latency_ms": latency_ms}, timeout=10
        )
        if response.status_code != 200 or response.json().get("latency_ms") != latency_ms:
            raise SetupError(f"the simulator did not take latency_ms={latency_ms}: {response.text[:300]}")


def slow_msisdn(phase: int, index: int) -> str:
    # +4477 routes to the CAMARA carrier; the last four digits choose no simulator scenario (those are 00xx).
    return f"+4477{phase}{index:04d}555"


def prepare_confirms(api: Api, processes: Processes, *, phase: int, count: int) -> list[tuple[str, str]]:
    """`count` CAMARA payments waiting for their PIN, with the PIN from the simulator's SMS: (id, pin)."""
    ids = [(api.create(slow_msisdn(phase, index), f"prep-{phase}-{index}"), index) for index in range(count)]
    prepared: list[tuple[str, str]] = []
    for payment_id, index in ids:
        wait_until(
            f"payment {payment_id} to reach pin_sent", lambda p=payment_id: api.status(p) == "pin_sent", processes
        )
        pin = wait_until(f"the PIN SMS of {payment_id}", lambda i=index: api.pin(slow_msisdn(phase, i)), processes)
        prepared.append((payment_id, pin))
    return prepared


# --- The load (asyncio, open loop) ----------------------------------------------------------------


def http_request(
    port: int, method: str, path: str, key: str, body: dict[str, Any] | None = None, **headers: str
) -> bytes:
    data = json.dumps(body).encode() if body is not None else b""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}:{port}", f"Authorization: Api-Key {key}"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(data)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + data


def read_request(port: int, key: str, payment_id: str) -> Any:
    return lambda i: http_request(port, "GET", f"/api/v1/payments/{payment_id}/", key)


def create_request(port: int, key: str, msisdn_prefix: str, key_prefix: str) -> Any:
    """The i-th create: its own number (`msisdn_prefix` routes it) and Idempotency-Key."""
    return lambda i: http_request(
        port,
        "POST",
        "/api/v1/payments/",
        key,
        {"user_ref": "bench", "msisdn": f"{msisdn_prefix}{i:06d}", "price_point": "gems-100"},
        Idempotency_Key=f"{key_prefix}-{i}",
    )


@dataclass
class Stream:
    """One kind of request, sent at a fixed rate; `payload(i)` builds the i-th request."""

    name: str
    rate: float
    payload: Any
    limit: int | None = None
    latencies_ms: list[float] = field(default_factory=list)
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    errors: int = 0
    answered: list[tuple[int, int, bytes]] = field(default_factory=list)  # (index, status, body) for confirms

    def figures(self) -> tuple[float, float, float]:
        ordered = sorted(self.latencies_ms)
        return percentile(ordered, 50), percentile(ordered, 99), ordered[-1] if ordered else float("nan")


async def run_streams(port: int, streams: list[Stream], duration_s: float, keep_bodies: set[str]) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.1
    pending: set[asyncio.Task[None]] = set()

    async def fire(stream: Stream, pool: ConnectionPool, index: int, scheduled: float) -> None:
        try:
            status, body = await asyncio.wait_for(pool.exchange(stream.payload(index)), REQUEST_TIMEOUT_S)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError):
            stream.errors += 1
            return
        stream.latencies_ms.append((loop.time() - scheduled) * 1000)
        stream.statuses[status] += 1
        if stream.name in keep_bodies:
            stream.answered.append((index, status, body))

    async def schedule(stream: Stream) -> None:
        pool = ConnectionPool(port)
        total = int(stream.rate * duration_s)
        if stream.limit is not None:
            total = min(total, stream.limit)
        for index in range(total):
            scheduled = start + index / stream.rate
            delay = scheduled - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(fire(stream, pool, index, scheduled))
            pending.add(task)
            task.add_done_callback(pending.discard)

    await asyncio.gather(*(schedule(stream) for stream in streams))
    if pending:
        await asyncio.wait(set(pending), timeout=REQUEST_TIMEOUT_S + 5)
    for task in list(pending):
        task.cancel()


@dataclass
class Phase:
    name: str
    streams: dict[str, Stream]
    confirmed: list[str]
    load_average: float  # the machine's, over the last minute, when the load ended
    outcomes: dict[str, int] = field(default_factory=dict)

    def unrelated_latencies(self) -> list[float]:
        return sorted(value for name in UNRELATED for value in self.streams[name].latencies_ms)


def run_phase(
    args: argparse.Namespace, api: Api, port: int, processes: Processes, *, phase: int, read_id: str
) -> Phase:
    confirms = int(args.confirm_rate * args.duration)
    log(f"phase {phase}: preparing {confirms} CAMARA payments waiting for their PIN")
    prepared = prepare_confirms(api, processes, phase=phase, count=confirms)
    if phase == 2:
        log(f"phase 2: the CAMARA simulator now answers after {args.latency_ms} ms")
        api.set_latency(args.latency_ms)
    key = api.key
    streams = [
        Stream("price points", args.read_rate, lambda i: http_request(port, "GET", PRICE_POINTS, key)),
        Stream("payment read", args.read_rate, read_request(port, key, read_id)),
        Stream("create (healthy carrier)", args.create_rate, create_request(port, key, "+447410", f"healthy-{phase}")),
        Stream("create (CAMARA)", args.slow_create_rate, create_request(port, key, f"+44778{phase}", f"slow-{phase}")),
        Stream(
            "confirm (CAMARA)",
            args.confirm_rate,
            lambda i: http_request(
                port, "POST", f"/api/v1/payments/{prepared[i][0]}/confirm/", key, {"pin": prepared[i][1]}
            ),
            limit=len(prepared),
        ),
    ]
    log(f"phase {phase}: mixed load for {args.duration:.0f} s")
    asyncio.run(run_streams(port, streams, args.duration, keep_bodies={"confirm (CAMARA)"}))
    processes.check_running()
    result = Phase(
        f"phase {phase}", {stream.name: stream for stream in streams}, [p for p, _ in prepared], os.getloadavg()[0]
    )
    if phase == 2:
        api.set_latency(0)
    return result


def settle(phase: Phase, database_url: str, wait_s: float) -> None:
    """What became of the confirmed payments, after at most `wait_s` for them to leave pin_sent."""
    deadline = time.monotonic() + wait_s
    while True:
        with psycopg.connect(database_url) as conn:
            rows = conn.execute(
                "SELECT status, pin_submitted_at IS NOT NULL, pin_error, count(*) FROM payments_payment "
                "WHERE public_id::text = ANY(%s) GROUP BY 1, 2, 3",
                (phase.confirmed,),
            ).fetchall()
        outcomes: dict[str, int] = collections.Counter()
        for status, checking, pin_error, count in rows:
            label = "pin check pending" if checking else (f"pin_sent ({pin_error})" if pin_error else status)
            outcomes[label if status == "pin_sent" else status] += count
        phase.outcomes = dict(outcomes)
        if "pin check pending" not in outcomes or time.monotonic() >= deadline:
            return
        time.sleep(1)


# --- Report ---------------------------------------------------------------------------------------


def ms(value: float) -> str:
    return f"{value:8.1f} ms"


def report(args: argparse.Namespace, topology: str, phases: list[Phase], errors: str) -> tuple[str, bool]:
    one, two = phases
    lines = [
        "Slow carrier benchmark (bench/slow_carrier.py)",
        f"  topology: {topology}",
        f"  load per phase ({args.duration:.0f} s, open loop): price points {args.read_rate}/s, payment read "
        f"{args.read_rate}/s, creates on {HEALTHY_CARRIER} {args.create_rate}/s, creates on {SLOW_CARRIER} "
        f"{args.slow_create_rate}/s, PIN confirms on {SLOW_CARRIER} {args.confirm_rate}/s",
        f"  phase 2: {SLOW_CARRIER}'s simulator answers after {args.latency_ms} ms (its read timeout: 10 s); "
        f"PIN_CONFIRM_WAIT_MS={args.confirm_wait_ms}",
        "",
        f"  {'unrelated endpoint':28s} {'phase 1 p50':>12s} {'p99':>11s} {'phase 2 p50':>12s} {'p99':>11s} "
        f"{'p99 ratio':>9s}",
    ]
    for name in UNRELATED:
        a50, a99, _ = one.streams[name].figures()
        b50, b99, _ = two.streams[name].figures()
        lines.append(f"  {name:28s} {ms(a50):>12s} {ms(a99):>11s} {ms(b50):>12s} {ms(b99):>11s} {b99 / a99:9.2f}")
    all_one, all_two = one.unrelated_latencies(), two.unrelated_latencies()
    a99, b99 = percentile(all_one, 99), percentile(all_two, 99)
    a50, b50 = percentile(all_one, 50), percentile(all_two, 50)
    lines.append(
        f"  {'all unrelated':28s} {ms(a50):>12s} {ms(a99):>11s} {ms(b50):>12s} {ms(b99):>11s} {b99 / a99:9.2f}"
    )
    lines += ["", f"  {SLOW_CARRIER} requests          p50          p99          max   answers"]
    bound_ms = args.confirm_wait_ms + 1000
    confirms_ok = True
    for phase in phases:
        for name in ("create (CAMARA)", "confirm (CAMARA)"):
            stream = phase.streams[name]
            p50, p99, top = stream.figures()
            answers = ", ".join(f"{status}: {count}" for status, count in sorted(stream.statuses.items()))
            if stream.errors:
                answers += f", no answer: {stream.errors}"
            lines.append(f"  {phase.name} {name:18s} {ms(p50)} {ms(p99)} {ms(top)}   {answers}")
            if name.startswith("confirm"):
                confirms_ok = confirms_ok and not stream.errors and top <= bound_ms
    lines.append(
        f"  machine load average (1 min) at the end of each phase: {one.load_average:.1f}, {two.load_average:.1f} "
        f"({os.cpu_count()} CPUs; the benchmark's own processes included)"
    )
    lines += ["", "  confirmed payments afterwards:"]
    for phase in phases:
        outcomes = ", ".join(f"{label}: {count}" for label, count in sorted(phase.outcomes.items()))
        lines.append(f"    {phase.name}: {outcomes}")
    unrelated_errors = sum(phase.streams[name].errors for phase in phases for name in UNRELATED)
    unrelated_ok = b99 <= max(a99 * args.max_ratio, a99 + 25) and unrelated_errors == 0
    lines += [
        "",
        f"  unrelated p99 within {args.max_ratio}x (or +25 ms) of phase 1's: "
        f"{'MET' if unrelated_ok else 'MISSED'} ({a99:.1f} -> {b99:.1f} ms, {unrelated_errors} unanswered)",
        f"  every confirm answered within PIN_CONFIRM_WAIT_MS + 1 s ({bound_ms} ms): "
        f"{'MET' if confirms_ok else 'MISSED'}",
    ]
    if errors:
        lines += ["", "  server errors (gunicorn log):", errors]
    return "\n".join(lines), unrelated_ok and confirms_ok


# --- Run ------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load per phase (30)")
    parser.add_argument("--workers", type=int, default=4, help="gunicorn workers (4)")
    parser.add_argument(
        "--worker-class", default="", help="gunicorn worker class (default: gunicorn.conf.py's, gthread)"
    )
    parser.add_argument("--threads", type=int, default=0, help="threads per worker (default: gunicorn.conf.py's)")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of unmeasured load first (5)")
    parser.add_argument("--latency-ms", type=int, default=15_000, help="the slow simulator's latency (15000)")
    parser.add_argument("--confirm-wait-ms", type=int, default=1000, help="PIN_CONFIRM_WAIT_MS (1000, the default)")
    parser.add_argument("--read-rate", type=float, default=5.0, help="price-point and payment reads/s, each (5)")
    parser.add_argument("--create-rate", type=float, default=2.0, help="creates/s on the healthy carrier (2)")
    parser.add_argument("--slow-create-rate", type=float, default=0.5, help="creates/s on the slow carrier (0.5)")
    parser.add_argument("--confirm-rate", type=float, default=1.0, help="PIN confirms/s on the slow carrier (1)")
    parser.add_argument("--max-ratio", type=float, default=1.5, help="allowed phase 2 / phase 1 unrelated p99 (1.5)")
    parser.add_argument("--pg-url", default=os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432"))
    parser.add_argument("--db-name", default="playpay_bench_slow", help="database to (re)create and drop")
    parser.add_argument(
        "--broker-url",
        default=os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/2"),
        help="Celery broker (env BENCH_BROKER_URL); emptied at the start and the end",
    )
    parser.add_argument(
        "--cache-url",
        default=os.environ.get("BENCH_CACHE_URL", "redis://127.0.0.1:6379/1"),
        help="CACHE_URL: rate-limit counters, carrier breakers (env BENCH_CACHE_URL)",
    )
    parser.add_argument("--keep-logs", type=Path, default=None, help="copy the processes' logs to this directory")
    args = parser.parse_args(argv)
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", args.db_name):
        parser.error("--db-name must be a plain lower-case identifier")
    if args.duration <= 0 or min(args.read_rate, args.create_rate, args.slow_create_rate, args.confirm_rate) <= 0:
        parser.error("--duration and the rates must be positive")
    return args


def run(args: argparse.Namespace, workdir: Path) -> bool:
    database_url = db_url(args.pg_url, args.db_name)
    web_port, sim_port = free_port(), free_port()
    web, sim = f"http://{HOST}:{web_port}", f"http://{HOST}:{sim_port}"
    env = app_env(database_url, args.cache_url, secrets.token_urlsafe(50), args.broker_url)
    env |= {
        "JOURNAL_URL": db_url(args.pg_url, f"{args.db_name}_journal"),
        "SANDBOX": "true",  # seed_demo's carriers and their simulators
        "PUBLIC_BASE_URL": web,  # where carriers send their callbacks
        "PIN_CONFIRM_WAIT_MS": str(args.confirm_wait_ms),
        "PLAYPAY_VAR_DIR": str(workdir / "var"),
    }
    redis.Redis.from_url(args.broker_url).flushdb()
    (workdir / "logs").mkdir()
    processes = Processes(workdir / "logs")
    try:
        log(f"creating databases {args.db_name}, {args.db_name}_journal")
        recreate_database(args.pg_url, args.db_name)
        recreate_database(args.pg_url, f"{args.db_name}_journal")
        manage(["migrate", "--noinput", "-v", "0"], env)
        manage(["migrate", "--noinput", "-v", "0", "--database", "journal"], env)
        # The carriers' endpoints are the simulators' server.
        seeded = manage(["seed_demo"], env | {"PUBLIC_BASE_URL": sim})
        match = re.search(r"^export PLAYPAY_API_KEY=(\S+)\s*$", seeded, flags=re.MULTILINE)
        if match is None:
            raise SetupError(f"no API key in seed_demo's output:\n{seeded}")
        api = Api(web, match.group(1), sim)

        web_options = ["--workers", str(args.workers)]
        web_options += ["--worker-class", args.worker_class] if args.worker_class else []
        web_options += ["--threads", str(args.threads)] if args.threads else []
        processes.start("simulators", gunicorn(sim_port, workdir / "sim.ctl", "--threads", "64"), env)
        processes.start("gunicorn", gunicorn(web_port, workdir / "web.ctl", *web_options), env)
        manage_py = [sys.executable, "manage.py", "carrier_worker"]
        processes.start("carrier_worker_slow", [*manage_py, "--carriers", SLOW_CARRIER, "--concurrency", "4"], env)
        processes.start("carrier_worker_others", [*manage_py, "--carriers", OTHER_CARRIERS, "--concurrency", "2"], env)
        celery = [sys.executable, "-m", "celery", "-A", "playpay", "worker", "-Q", "default,webhooks"]
        processes.start("celery_worker", [*celery, "--concurrency", "1"], env)
        wait_until("gunicorn", lambda: httpx.get(f"{web}/readyz", timeout=5).status_code == 200, processes)
        wait_until(
            "the simulators", lambda: httpx.get(f"{sim}/simulators/camara/_settings", timeout=5).is_success, processes
        )
        read_id = api.create("+447410999999", "read-target")
        wait_until("the workers", lambda: api.status(read_id) == "pin_sent", processes)
        worker_class = args.worker_class or "gthread"
        threads = args.threads or int(env.get("GUNICORN_THREADS", "4"))
        topology = (
            f"gunicorn {args.workers} x {worker_class} workers"
            + (f" x {threads} threads" if worker_class == "gthread" else "")
            + (" (command line)" if args.worker_class else " (gunicorn.conf.py)")
            + f", DEBUG=false; carrier workers: {SLOW_CARRIER} (4 processes), the other carriers (2); Celery "
            "worker (1); Redis broker; PostgreSQL; simulators in a separate 1-worker gunicorn"
        )
        if args.warmup > 0:
            log(f"warm-up: {args.warmup:.0f} s of the unrelated load, not measured")
            warm = [
                Stream("price points", args.read_rate, lambda i: http_request(web_port, "GET", PRICE_POINTS, api.key)),
                Stream("payment read", args.read_rate, read_request(web_port, api.key, read_id)),
                Stream(
                    "create (healthy carrier)", args.create_rate, create_request(web_port, api.key, "+447419", "warm")
                ),
            ]
            asyncio.run(run_streams(web_port, warm, args.warmup, keep_bodies=set()))

        phases = []
        for number in (1, 2):
            phase = run_phase(args, api, web_port, processes, phase=number, read_id=read_id)
            log(f"phase {number}: waiting for the confirmed payments' verdicts")
            settle(phase, database_url, wait_s=60 if number == 1 else 30)
            phases.append(phase)
        text, ok = report(args, topology, phases, server_errors(workdir / "logs" / "gunicorn.log"))
        print(text, flush=True)
        return ok
    finally:
        processes.stop_all()
        if args.keep_logs:
            args.keep_logs.mkdir(parents=True, exist_ok=True)
            for path in (workdir / "logs").glob("*.log"):
                (args.keep_logs / path.name).write_bytes(path.read_bytes())
        with contextlib.suppress(psycopg.Error):
            drop_database(args.pg_url, args.db_name)
            drop_database(args.pg_url, f"{args.db_name}_journal")
        with contextlib.suppress(redis.RedisError):
            redis.Redis.from_url(args.broker_url).flushdb()  # the work left queued for the stopped workers


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_bench(lambda tmp: run(args, tmp))


if __name__ == "__main__":
    sys.exit(main())
