"""Benchmark: how many funnel events per second `POST /api/v1/funnel/events/` stores in PostgreSQL,
against PostgreSQL's own COPY rate for the same rows into the same table.

What it measures, in one run:

* API: batches of `--batch` events (1,000 by default) posted in a closed loop over `--connections`
  connections for `--duration` seconds, each event with its own event id, six events per journey.
  Reports events stored per second (the `accepted` counts of the 200 responses), batches per second,
  p50/p99 latency of a batch, the events found in the database afterwards, and where the server's CPU
  went per 1,000 events (gunicorn, PostgreSQL, Redis).
* COPY: the same number of rows, shaped the same way, written by psycopg 3 `COPY ... FROM STDIN` into
  the same partitioned `funnel_funnelevent` table in one transaction; then again with the rows' keys
  into `funnel_funneleventkey` as well (what ingestion writes besides the events). The ratios
  API events/s / COPY rows/s say how close the API comes to the database's bulk-load rate.

It prints the figures and whether the target is met (>= 20,000 events/s). It exits 0 whatever the
figures; non-zero only when the setup fails.

How it runs: a fresh database (`playpay_bench_funnel`, and `..._journal` for the interaction journal,
as deployed), `migrate`, an app and its API key (`create_app`), gunicorn serving the app on a free
loopback port, and the load from `wrk` (its Lua script builds each batch with fresh ids) or, without
wrk, from the script's own asyncio client. See bench/README.md.

    python bench/funnel_ingest.py [--duration 20] [--connections 4] [--batch 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import math
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

try:
    import psycopg
except ImportError:
    sys.exit("bench/funnel_ingest.py needs the project's dependencies (psycopg): activate its virtualenv first")

from harness import (
    DEPLOYED_THREADS,
    HOST,
    REQUEST_TIMEOUT_S,
    ConnectionPool,
    CpuUse,
    Server,
    SetupError,
    app_env,
    db_url,
    describe_server,
    drop_database,
    log,
    manage,
    measure_cpu,
    other_load_lines,
    percentile,
    recreate_database,
    run_bench,
    server_cpu_lines,
    server_errors,
    verdict,
    wrk_ms,
)

EVENTS_PATH = "/api/v1/funnel/events/"
TARGET_EVENTS_PER_SECOND = 20_000.0
STEPS = ("store_opened", "item_selected", "msisdn_entered", "payment_created", "pin_verified", "charge_succeeded")
EVENTS_PER_JOURNEY = len(STEPS)
SPREAD_S = 3000  # events happened up to 50 minutes before the run started
PROPERTIES = '{"screen":"shop","price_point":"gems-100"}'
COPY_COLUMNS = "app_id, journey_id, event_id, step, occurred_at, received_at, source, error_code, properties"

# The same events as `event_json` below, built in Lua: the parts that do not change are made once in
# init(); each request joins them with ids made of the thread, the request counter and the index.
WRK_SCRIPT = """\
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

local steps = {%(steps)s}
local threads = {}
local counter = 0
local tails = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

function init(args)
  prefix = args[1] .. "-t" .. tid .. "-"
  batch = tonumber(args[2])
  local base = tonumber(args[3])
  for i = 0, batch - 1 do
    local at = os.date("!%%Y-%%m-%%dT%%H:%%M:%%SZ", base - (i * 7919) %% %(spread)d)
    tails[i + 1] = '","step":"' .. steps[(i %% %(per_journey)d) + 1] .. '","occurred_at":"' .. at ..
      '","user_ref":"player-' .. math.floor(i / %(per_journey)d) .. '","properties":%(properties)s}'
  end
end

function request()
  counter = counter + 1
  local rp = prefix .. counter .. "-"
  local parts = {}
  for i = 0, batch - 1 do
    parts[i + 1] = '{"event_id":"' .. rp .. i .. '","journey_id":"' .. rp .. "j" .. math.floor(i / %(per_journey)d) ..
      tails[i + 1]
  end
  return wrk.format(nil, nil, nil, '{"events":[' .. table.concat(parts, ",") .. "]}")
end

statuses = {}
accepted = 0

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  local n = string.match(body, '"accepted":(%%d+)')
  if n then accepted = accepted + tonumber(n) end
end

function done(summary, latency, requests)
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses")) do
      io.write(string.format("STATUS %%d %%d\\n", status, count))
    end
    io.write(string.format("ACCEPTED %%d\\n", thread:get("accepted")))
  end
end
"""


@dataclass
class IngestResult:
    """What the load phase saw. Latencies in milliseconds (per batch)."""

    tool: str
    elapsed_s: float
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    accepted: int = 0
    errors: int = 0
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    cpu: CpuUse | None = None

    @property
    def events_per_s(self) -> float:
        return self.accepted / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def batches(self) -> int:
        return self.statuses[200]

    def status_summary(self) -> str:
        other = {status: count for status, count in sorted(self.statuses.items()) if status != 200}
        text = ", ".join(f"{count} x {status}" for status, count in other.items()) or "none"
        return text + (f"; {self.errors} without response (connection error/timeout)" if self.errors else "")


@dataclass
class CopyResult:
    rows: int
    seconds: float
    with_keys: bool
    cpu: CpuUse | None = None

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


# --- The events -----------------------------------------------------------------------------------


def iso(epoch_s: int) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def event_fields(prefix: str, i: int, base: int) -> tuple[str, str, str, str, str]:
    """(event_id, journey_id, step, occurred_at, user_ref) of event i of the batch `prefix`, as wrk makes them."""
    return (
        f"{prefix}{i}",
        f"{prefix}j{i // EVENTS_PER_JOURNEY}",
        STEPS[i % EVENTS_PER_JOURNEY],
        iso(base - (i * 7919) % SPREAD_S),
        f"player-{i // EVENTS_PER_JOURNEY}",
    )


def batch_body(prefix: str, size: int, base: int) -> bytes:
    events = []
    for i in range(size):
        event_id, journey_id, step, at, user_ref = event_fields(prefix, i, base)
        events.append(
            f'{{"event_id":"{event_id}","journey_id":"{journey_id}","step":"{step}","occurred_at":"{at}",'
            f'"user_ref":"{user_ref}","properties":{PROPERTIES}}}'
        )
    return ('{"events":[' + ",".join(events) + "]}").encode()


def events_request(port: int, api_key: str, body: bytes) -> bytes:
    head = (
        f"POST {EVENTS_PATH} HTTP/1.1\r\n"
        f"Host: {HOST}:{port}\r\n"
        f"Authorization: Api-Key {api_key}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("ascii") + body


# --- Load -----------------------------------------------------------------------------------------


async def post_batch(pool: ConnectionPool, payload: bytes) -> tuple[int, int]:
    """(status, events accepted) of one batch."""
    status, body = await pool.exchange(payload)
    match = re.search(rb'"accepted":\s*(\d+)', body)
    return status, int(match.group(1)) if match else 0


async def closed_loop(
    *, port: int, api_key: str, prefix: str, connections: int, duration_s: float, batch: int, base: int
) -> IngestResult:
    """N connections, each posting its next batch when the previous one is answered. Bodies are built
    ahead, while the previous batch is in flight, so that the client's own work overlaps the server's."""
    loop = asyncio.get_running_loop()
    result = IngestResult(tool="asyncio client", elapsed_s=0.0)
    latencies: list[float] = []
    start = loop.time()
    deadline = start + duration_s

    async def connection_loop(index: int) -> None:
        pool = ConnectionPool(port)
        counter = 0
        try:
            while loop.time() < deadline:
                counter += 1
                payload = events_request(port, api_key, batch_body(f"{prefix}-c{index}-{counter}-", batch, base))
                sent = loop.time()
                try:
                    status, accepted = await asyncio.wait_for(post_batch(pool, payload), REQUEST_TIMEOUT_S)
                except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError):
                    result.errors += 1
                    pool.close()
                    continue
                latencies.append((loop.time() - sent) * 1000)
                result.statuses[status] += 1
                result.accepted += accepted
        finally:
            pool.close()

    await asyncio.gather(*(connection_loop(index) for index in range(connections)))
    result.elapsed_s = loop.time() - start
    latencies.sort()
    result.p50_ms, result.p99_ms = percentile(latencies, 50), percentile(latencies, 99)
    return result


def run_wrk(
    *,
    wrk: str,
    port: int,
    api_key: str,
    prefix: str,
    connections: int,
    duration_s: float,
    batch: int,
    base: int,
    workdir: Path,
) -> IngestResult:
    script = workdir / "funnel_events.lua"
    script.write_text(
        WRK_SCRIPT
        % {
            "steps": ", ".join(f'"{step}"' for step in STEPS),
            "spread": SPREAD_S,
            "per_journey": EVENTS_PER_JOURNEY,
            "properties": PROPERTIES,
        }
    )
    command = [
        wrk,
        "--threads",
        "1",
        "--connections",
        str(connections),
        "--duration",
        f"{max(round(duration_s), 1)}s",
        "--timeout",
        f"{int(REQUEST_TIMEOUT_S)}s",
        "--latency",
        "--script",
        str(script),
        "--header",
        f"Authorization: Api-Key {api_key}",
        f"http://{HOST}:{port}{EVENTS_PATH}",
        "--",
        prefix,
        str(batch),
        str(base),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=duration_s + 120, check=False)
    output = done.stdout
    summary = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", output)
    if done.returncode != 0 or summary is None:
        raise SetupError(f"wrk failed ({done.returncode}):\n{output}{done.stderr}")
    result = IngestResult(tool="wrk", elapsed_s=wrk_ms(summary.group(2) + summary.group(3)) / 1000)
    for status, count in re.findall(r"^STATUS (\d+) (\d+)$", output, flags=re.MULTILINE):
        result.statuses[int(status)] += int(count)
    result.accepted = sum(int(n) for n in re.findall(r"^ACCEPTED (\d+)$", output, flags=re.MULTILINE))
    distribution = dict(re.findall(r"^\s+(50|99)\.?0*%\s+(\S+)$", output, flags=re.MULTILINE))
    if "50" in distribution:
        result.p50_ms = wrk_ms(distribution["50"])
    if "99" in distribution:
        result.p99_ms = wrk_ms(distribution["99"])
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if socket_errors:
        connect, _read, write, timeout = (int(value) for value in socket_errors.groups())
        result.errors = connect + write + timeout
    return result


# --- Database -------------------------------------------------------------------------------------


def count_events(database_url: str, prefix: str) -> int:
    """Events whose id starts with `prefix` (one phase's)."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT count(*) FROM funnel_funnelevent WHERE event_id LIKE %s", (prefix + "%",)).fetchone()
    return int(row[0]) if row else 0


def settled_count(database_url: str, prefix: str, timeout_s: float = 15.0) -> int:
    """The phase's event count once batches cut off by the client have finished on the server."""
    deadline = time.monotonic() + timeout_s
    count = count_events(database_url, prefix)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        previous, count = count, count_events(database_url, prefix)
        if count == previous:
            break
    return count


def app_id(database_url: str, name: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT id FROM tenants_app WHERE name = %s", (name,)).fetchone()
    if row is None:
        raise SetupError(f"no app {name!r} in the bench database")
    return int(row[0])


def copy_data(*, app: int, rows: int, batch: int, base: int, prefix: str) -> tuple[bytes, bytes]:
    """The rows as COPY text, in the same shape as the API's: (events, their keys)."""
    received = datetime.now(UTC).isoformat()
    events: list[str] = []
    keys: list[str] = []
    for n in range(math.ceil(rows / batch)):
        batch_prefix = f"{prefix}-{n}-"
        for i in range(min(batch, rows - n * batch)):
            event_id, journey_id, step, at, _user_ref = event_fields(batch_prefix, i, base)
            events.append(f"{app}\t{journey_id}\t{event_id}\t{step}\t{at}\t{received}\tgame\t\t{PROPERTIES}\n")
            keys.append(f"{app}\t{event_id}\n")
    return "".join(events).encode(), "".join(keys).encode()


def run_copy(database_url: str, events: bytes, keys: bytes | None, rows: int, chunk: int = 1 << 20) -> CopyResult:
    """COPY the rows in one transaction (and their keys, when given); the time includes the commit."""
    with psycopg.connect(database_url) as conn:
        started = time.perf_counter()
        with conn.cursor() as cursor:
            with cursor.copy(f"COPY funnel_funnelevent ({COPY_COLUMNS}) FROM STDIN") as copy:
                for offset in range(0, len(events), chunk):
                    copy.write(events[offset : offset + chunk])
            if keys is not None:
                with cursor.copy("COPY funnel_funneleventkey (app_id, event_id) FROM STDIN") as copy:
                    for offset in range(0, len(keys), chunk):
                        copy.write(keys[offset : offset + chunk])
        conn.commit()
        seconds = time.perf_counter() - started
    return CopyResult(rows=rows, seconds=seconds, with_keys=keys is not None)


# --- Report ---------------------------------------------------------------------------------------


def report(
    *, args: argparse.Namespace, server: str, api: IngestResult, in_db: int, copies: list[CopyResult], errors_text: str
) -> str:
    batches = api.batches + sum(count for status, count in api.statuses.items() if status != 200)
    lines = [
        "",
        "=" * 78,
        "PlayPay funnel event ingestion benchmark",
        f"  server: {server}; {os.cpu_count()} CPUs; {args.duration:.0f} s; batches of {args.batch} events",
        f"  journal: {'off (--no-journal)' if args.no_journal else 'on, in its own database'}",
        "",
        f"API: POST {EVENTS_PATH}, closed loop, {args.connections} connections ({api.tool})",
        f"  events stored/s         {api.events_per_s:9.0f}   ({api.accepted} accepted in {api.elapsed_s:.1f} s)",
        f"  batches/s               {api.batches / api.elapsed_s if api.elapsed_s else 0:9.1f}   ({api.batches} x 200)",
        f"  non-200 responses       {batches - api.batches:9d}   ({api.status_summary()})",
        f"  batch latency p50 / p99 {api.p50_ms:9.1f} ms / {api.p99_ms:.1f} ms",
    ]
    difference = in_db - api.accepted
    if difference == 0:
        note = "matches the accepted counts"
    elif 0 < difference <= args.connections * args.batch:
        note = f"{difference} more than accepted: batches in flight when the client stopped"
    else:
        note = f"MISMATCH: {difference:+d} against the accepted counts"
    lines.append(f"  events in database      {in_db:9d}   ({note})")
    lines += server_cpu_lines(api.cpu, in_db / 1000, unit="1,000 events", rate_unit="k events/s")
    lines += other_load_lines(api.cpu)
    for copy in copies:
        what = "events and their keys" if copy.with_keys else "events"
        ratio = api.events_per_s / copy.rows_per_s if copy.rows_per_s else math.nan
        lines += [
            "",
            f"PostgreSQL COPY (psycopg 3), one connection, one transaction: {what}",
            f"  rows/s                  {copy.rows_per_s:9.0f}   ({copy.rows} rows in {copy.seconds:.2f} s)",
            *other_load_lines(copy.cpu),
            f"  ratio API events/s / COPY rows/s: {ratio:.3f}",
        ]
    lines += [
        "",
        "Target",
        f"  {f'>= {TARGET_EVENTS_PER_SECOND:,.0f} events/s:':<38}"
        f"{verdict(api.events_per_s >= TARGET_EVENTS_PER_SECOND)} ({api.events_per_s:,.0f})",
    ]
    if errors_text:
        lines += ["", "Server errors (from the gunicorn log):", errors_text]
    lines.append("=" * 78)
    return "\n".join(lines)


# --- Main -----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load (default 20)")
    parser.add_argument("--batch", type=int, default=1000, help="events per request (1000, the API's maximum)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (2)")
    parser.add_argument(
        "--worker-class",
        choices=["sync", "gthread"],
        default="gthread",
        help="gunicorn worker class (as deployed: gthread)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=DEPLOYED_THREADS,
        help=f"threads per gthread worker (as deployed: {DEPLOYED_THREADS})",
    )
    parser.add_argument("--connections", type=int, default=4, help="concurrent batches in flight (4)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of untimed load first (3)")
    parser.add_argument(
        "--client", choices=["auto", "wrk", "python"], default="auto", help="load client (auto: wrk if installed)"
    )
    parser.add_argument(
        "--copy-rows", type=int, default=0, help="rows for the COPY measurement (default: as many as the API stored)"
    )
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432"),
        help="PostgreSQL server URL without database (env BENCH_PG_URL)",
    )
    parser.add_argument("--db-name", default="playpay_bench_funnel", help="database to (re)create and drop")
    parser.add_argument(
        "--cache-url",
        default=os.environ.get("BENCH_CACHE_URL", "redis://127.0.0.1:6379/1"),
        help="CACHE_URL for the server's rate-limit counters (env BENCH_CACHE_URL)",
    )
    parser.add_argument("--no-journal", action="store_true", help="run without the interaction journal")
    parser.add_argument("--log-file", type=Path, default=None, help="keep the gunicorn log at this path")
    parser.add_argument("--keep-db", action="store_true", help="do not drop the database at the end")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.workers < 1 or args.connections < 1 or args.threads < 1:
        parser.error("--duration, --workers, --connections and --threads must be positive")
    if not 1 <= args.batch <= 1000:
        parser.error("--batch is 1 to 1000")
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", args.db_name):
        parser.error("--db-name must be a plain lower-case identifier")
    return args


def run(args: argparse.Namespace, workdir: Path) -> str:
    wrk = shutil.which("wrk") if args.client != "python" else None
    if args.client == "wrk" and wrk is None:
        raise SetupError("wrk not found (Debian: apt-get install -y wrk)")
    database_url = db_url(args.pg_url, args.db_name)
    journal_db = f"{args.db_name}_journal"
    env = app_env(database_url, args.cache_url, secrets.token_urlsafe(50), "")
    env["JOURNAL_URL"] = db_url(args.pg_url, journal_db)
    env["JOURNAL_ENABLED"] = "false" if args.no_journal else "true"
    run_id = secrets.token_hex(3)
    base = int(time.time()) - 60
    log_path: Path = args.log_file or workdir / "gunicorn.log"
    server: Server | None = None
    try:
        log(f"creating databases {args.db_name}, {journal_db}")
        recreate_database(args.pg_url, args.db_name)
        recreate_database(args.pg_url, journal_db)
        log("migrate")
        manage(["migrate", "--noinput", "-v", "0"], env)
        manage(["migrate", "--noinput", "-v", "0", "--database", "journal"], env)
        api_key = manage(["create_app", "bench-funnel"], env).strip().splitlines()[-1]
        app = app_id(database_url, "bench-funnel")

        server = Server(
            env=env, workers=args.workers, worker_class=args.worker_class, threads=args.threads, log_path=log_path
        )
        log(f"starting {server.description} on {HOST}:{server.port} (log: {log_path})")
        server.wait_ready()
        smoke_body = batch_body(f"smoke-{run_id}-", args.batch, base)
        status, accepted = asyncio.run(_one(server.port, events_request(server.port, api_key, smoke_body)))
        if status != 200 or accepted != args.batch:
            raise SetupError(
                f"a first batch got {status} with {accepted} of {args.batch} accepted; server log:\n"
                f"{server_errors(log_path) or server.log_tail()}"
            )

        port = server.port

        def load(prefix: str, duration_s: float) -> IngestResult:
            if wrk:
                return run_wrk(
                    wrk=wrk,
                    port=port,
                    api_key=api_key,
                    prefix=prefix,
                    connections=args.connections,
                    duration_s=duration_s,
                    batch=args.batch,
                    base=base,
                    workdir=workdir,
                )
            return asyncio.run(
                closed_loop(
                    port=port,
                    api_key=api_key,
                    prefix=prefix,
                    connections=args.connections,
                    duration_s=duration_s,
                    batch=args.batch,
                    base=base,
                )
            )

        if args.warmup > 0:
            log(f"warm-up, {args.warmup:.0f} s")
            load(f"W{run_id}", args.warmup)
        prefix = f"A{run_id}"
        log(f"load: {args.connections} connections, {args.duration:.0f} s ({wrk or 'asyncio client'})")
        with measure_cpu(server.process.pid, args.db_name) as cpu:
            api = load(prefix, args.duration)
        api.cpu = cpu
        in_db = settled_count(database_url, prefix)
        server.stop()
        errors_text = server_errors(log_path)
        server = None

        rows = args.copy_rows or max(in_db, args.batch)
        log(f"COPY: {rows} rows")
        events, keys = copy_data(app=app, rows=rows, batch=args.batch, base=base, prefix=f"C{run_id}")
        copies = []
        with measure_cpu(-1, args.db_name, our_processes_persist=False) as copy_cpu:
            copies.append(run_copy(database_url, events, None, rows))
        copies[-1].cpu = copy_cpu
        events, keys = copy_data(app=app, rows=rows, batch=args.batch, base=base, prefix=f"K{run_id}")
        with measure_cpu(-1, args.db_name, our_processes_persist=False) as copy_cpu:
            copies.append(run_copy(database_url, events, keys, rows))
        copies[-1].cpu = copy_cpu
        return report(
            args=args,
            server=describe_server(args.workers, args.worker_class, args.threads),
            api=api,
            in_db=in_db,
            copies=copies,
            errors_text=errors_text,
        )
    finally:
        if server is not None:
            log("stopping gunicorn")
            server.stop()
        if not args.keep_db:
            log(f"dropping databases {args.db_name}, {journal_db}")
            with contextlib.suppress(psycopg.Error):
                drop_database(args.pg_url, args.db_name)
                drop_database(args.pg_url, journal_db)


async def _one(port: int, payload: bytes) -> tuple[int, int]:
    pool = ConnectionPool(port)
    try:
        return await asyncio.wait_for(post_batch(pool, payload), REQUEST_TIMEOUT_S)
    finally:
        pool.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def report(tmp: Path) -> bool:
        print(run(args, tmp), flush=True)
        return True

    return run_bench(report)


if __name__ == "__main__":
    sys.exit(main())
