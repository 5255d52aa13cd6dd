"""What a client sees while the PostgreSQL server freezes for 45 s (bench/README.md, `db_freeze.py`).

A private PostgreSQL server (tests/pg_instance.py) holds both the main and the journal database; the demo is
migrated and seeded there and served by gunicorn (DEBUG=false, several workers). Clients poll
`GET /api/v1/price-points/` and create payments (`POST /api/v1/payments/`) without pause, each request with a
client timeout; the postmaster and every backend get SIGSTOP for `--freeze` seconds, then SIGCONT, and the
clients go on for `--after` seconds. Printed: per time bucket the statuses seen, the slowest answer, whether the
503s carried Retry-After; the time to the first 503, the time to the first good answer after SIGCONT, and every
500, connection error or client timeout (there must be none).
"""

from __future__ import annotations

import argparse
import collections
import secrets
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import requests
from harness import REPO_ROOT, Server, SetupError, app_env, log, manage, run_bench, server_errors

sys.path.insert(0, str(REPO_ROOT))
from tests.pg_instance import PgInstance

PRICE_POINTS = "/api/v1/price-points/"
PAYMENTS = "/api/v1/payments/"
BODY = {"user_ref": "p1", "msisdn": "+447400123456", "price_point": "gems-100"}


@dataclass
class Answer:
    client: str
    sent: float  # seconds since the freeze began (negative: before)
    seconds: float
    status: int  # 0: no HTTP answer
    retry_after: bool
    problem: bool
    error: str = ""


def _poll(
    name: str, base: str, api_key: str, *, post: bool, timeout: float, origin: list[float], stop: threading.Event
) -> list[Answer]:
    session = requests.Session()
    session.headers["Authorization"] = f"Api-Key {api_key}"
    answers: list[Answer] = []
    number = 0
    while not stop.is_set():
        number += 1
        started = time.monotonic()
        try:
            if post:
                response = session.post(
                    base + PAYMENTS,
                    json=BODY,
                    headers={"Idempotency-Key": f"{name}-{number}-{secrets.token_hex(4)}"},
                    timeout=timeout,
                )
            else:
                response = session.get(base + PRICE_POINTS, timeout=timeout)
        except requests.RequestException as exc:
            answers.append(Answer(name, started - origin[0], time.monotonic() - started, 0, False, False, repr(exc)))
            time.sleep(0.2)
            continue
        answers.append(
            Answer(
                name,
                started - origin[0],
                time.monotonic() - started,
                response.status_code,
                "Retry-After" in response.headers,
                response.headers.get("Content-Type", "").startswith("application/problem+json"),
            )
        )
        if response.status_code >= 500:
            time.sleep(0.2)  # as a client honouring the outage would, a little
    return answers


def report(answers: list[Answer], *, freeze: float, bucket: float) -> bool:
    answers.sort(key=lambda a: a.sent)
    print()
    print(f"{'t (s)':>11}  {'answers':>7}  {'max latency':>11}  statuses (503s with Retry-After)")
    buckets: dict[int, list[Answer]] = collections.defaultdict(list)
    for answer in answers:
        buckets[int(answer.sent // bucket)].append(answer)
    for index in sorted(buckets):
        group = buckets[index]
        statuses = collections.Counter(a.status if a.status else "conn-error" for a in group)
        unavailable = [a for a in group if a.status == 503]
        with_retry = sum(a.retry_after and a.problem for a in unavailable)
        text = ", ".join(f"{status}: {count}" for status, count in sorted(statuses.items(), key=str))
        if unavailable:
            text += f"  ({with_retry}/{len(unavailable)})"
        start = index * bucket
        marker = " frozen" if 0 <= start < freeze else ""
        print(
            f"{start:5.0f}..{start + bucket:<4.0f}  {len(group):7d}  {max(a.seconds for a in group):10.2f}s  "
            f"{text}{marker}"
        )
    first_503 = min((a.sent + a.seconds for a in answers if a.status == 503), default=None)
    recovered = min((a.sent + a.seconds for a in answers if a.sent >= freeze and a.status in (200, 201)), default=None)
    bad = [a for a in answers if a.status == 0 or a.status == 500 or a.status > 503]
    unbounded = [a for a in answers if a.status == 503 and not (a.retry_after and a.problem)]
    during = [a for a in answers if 0 <= a.sent < freeze]
    print()
    print(f"requests                         {len(answers)} ({len(during)} sent while frozen)")
    print(f"slowest answer while frozen      {max((a.seconds for a in during), default=0):.2f} s")
    print(f"first 503 after the freeze began {first_503:.2f} s" if first_503 is not None else "first 503: none")
    print(
        f"first 2xx after SIGCONT          {recovered - freeze:.2f} s"
        if recovered is not None
        else "first 2xx after SIGCONT: none"
    )
    print(f"503 without Retry-After/problem  {len(unbounded)}")
    print(f"500s, other 5xx, conn. errors    {len(bad)}")
    for answer in bad[:10]:
        print(f"  {answer.client} at {answer.sent:.2f} s: {answer.status or answer.error} after {answer.seconds:.2f} s")
    return not bad and not unbounded and recovered is not None


def run(args: argparse.Namespace, workdir: Path) -> bool:
    server: Server | None = None
    pg = PgInstance()
    try:
        pg.start()
        pg.wait_until_accepting()
        env = app_env(pg.create_database("playpay"), args.cache_url, secrets.token_urlsafe(50), "")
        env["JOURNAL_URL"] = pg.create_database("playpay_journal")
        env["JOURNAL_SPOOL_DIR"] = str(workdir / "spool")
        env["SANDBOX"] = "true"  # the demo's carriers
        env["PLAYPAY_VAR_DIR"] = str(workdir / "var")
        log("migrate and seed_demo")
        manage(["migrate", "--noinput", "-v", "0"], env)
        manage(["migrate", "--noinput", "-v", "0", "--database", "journal"], env)
        seeded = manage(["seed_demo"], env)
        api_key = next(
            line.split("=", 1)[1].strip() for line in seeded.splitlines() if line.startswith("export PLAYPAY_API_KEY=")
        )
        server = Server(
            env=env,
            workers=args.workers,
            worker_class=args.worker_class,
            threads=args.threads,
            log_path=workdir / "web.log",
        )
        log(f"starting {server.description} on port {server.port}")
        server.wait_ready()
        base = f"http://127.0.0.1:{server.port}"
        origin = [time.monotonic() + args.before]
        stop = threading.Event()
        results: list[list[Answer]] = []
        threads = []
        for index in range(args.clients):
            post = index % 2 == 1
            name = f"{'post' if post else 'get'}-{index}"

            def poll(name: str = name, post: bool = post) -> None:
                results.append(
                    _poll(name, base, api_key, post=post, timeout=args.client_timeout, origin=origin, stop=stop)
                )

            threads.append(threading.Thread(target=poll))
        for thread in threads:
            thread.start()
        time.sleep(args.before)
        log(f"SIGSTOP: the PostgreSQL server freezes for {args.freeze:.0f} s")
        frozen = pg.freeze()
        time.sleep(args.freeze)
        pg.thaw(frozen)
        log(f"SIGCONT; {args.after:.0f} s more")
        time.sleep(args.after)
        stop.set()
        for thread in threads:
            thread.join(args.client_timeout + 5)
        print(
            f"\nPostgreSQL frozen (SIGSTOP, {len(frozen)} processes) for {args.freeze:.0f} s; {server.description}, "
            f"{args.clients} clients (GET {PRICE_POINTS}, POST {PAYMENTS}), client timeout {args.client_timeout:.0f} s"
        )
        ok = report([a for answers in results for a in answers], freeze=args.freeze, bucket=args.bucket)
        errors = server_errors(server.log_path)
        if errors:
            print("\nserver log errors:\n" + errors.split("  first traceback")[0])
        return ok and not errors
    except StopIteration:
        raise SetupError("no `export PLAYPAY_API_KEY=` line in seed_demo's output") from None
    finally:
        if server is not None:
            server.stop()
        pg.destroy()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--freeze", type=float, default=45.0, help="seconds the server stays frozen")
    parser.add_argument("--before", type=float, default=5.0, help="seconds of traffic before the freeze")
    parser.add_argument("--after", type=float, default=15.0, help="seconds of traffic after SIGCONT")
    parser.add_argument("--bucket", type=float, default=5.0, help="seconds per line of the timeline")
    parser.add_argument("--workers", type=int, default=4, help="gunicorn workers")
    parser.add_argument("--worker-class", default="gthread", help="gunicorn worker class (gunicorn.conf.py's: gthread)")
    parser.add_argument("--threads", type=int, default=4, help="threads per worker (gunicorn.conf.py's default: 4)")
    parser.add_argument("--clients", type=int, default=4, help="client threads, half GET, half POST")
    parser.add_argument("--client-timeout", type=float, default=30.0, help="each request's timeout")
    parser.add_argument("--cache-url", default="redis://127.0.0.1:6379/1", help="Redis for rate limits")
    args = parser.parse_args()
    return run_bench(lambda workdir: run(args, workdir))


if __name__ == "__main__":
    sys.exit(main())
