"""How far a reporting replica trails its primary (bench/README.md, `replica_lag.py`).

Two private PostgreSQL servers (tests/pg_instance.py): a primary and its streaming replica, made by
pg_basebackup as a deployment makes one (REPORTING_DATABASE_URL, docs/scaling.md). A probe commits one row
on the primary and reads the replica until the row is there: the time from the commit's start to the row seen
on the replica, first with nothing else running (`--probes` times), then for `--seconds` while `--writers`
clients insert rows as fast as they can (one probe every 50 ms). The reference, measured in the same run:
the same probe's commit alone (no replica read), so the lag is what the replica adds to it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
from harness import REPO_ROOT, log, run_bench

sys.path.insert(0, str(REPO_ROOT))
from tests.pg_instance import PgInstance, pg_instance

TABLE = "CREATE TABLE lag (id bigserial PRIMARY KEY, payload text NOT NULL)"


def probe(primary: psycopg.Connection, replica: psycopg.Connection | None, *, pause: float = 0.0) -> float:
    """Milliseconds from a one-row commit's start until the replica shows the row (the commit alone: None)."""
    started = time.perf_counter()
    row = primary.execute("INSERT INTO lag (payload) VALUES ('probe') RETURNING id").fetchone()
    assert row is not None
    while replica is not None and not replica.execute("SELECT 1 FROM lag WHERE id = %s", row).fetchone():
        if pause:
            time.sleep(pause)
    return (time.perf_counter() - started) * 1000


def summary(values: list[float]) -> str:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"median {statistics.median(ordered):.2f} ms, p99 {p99:.2f} ms, worst {ordered[-1]:.2f} ms ({len(ordered)})"


def under_load(url: str, writers: int, seconds: float, measure: Callable[[], float]) -> tuple[list[float], float]:
    """`measure()` every 50 ms for `seconds` while `writers` clients insert rows; (the figures, inserts/s)."""
    stop, counts = threading.Event(), [0] * writers

    def write(index: int) -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            while not stop.is_set():
                conn.execute("INSERT INTO lag (payload) VALUES (repeat('x', 200))")
                counts[index] += 1

    threads = [threading.Thread(target=write, args=(index,)) for index in range(writers)]
    for thread in threads:
        thread.start()
    figures, began = [], time.monotonic()
    try:
        while time.monotonic() - began < seconds:
            figures.append(measure())
            time.sleep(0.05)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    return figures, sum(counts) / (time.monotonic() - began)


def run(args: argparse.Namespace) -> str:
    with pg_instance() as primary:
        primary.wait_until_accepting()
        log("starting the replica (pg_basebackup)")
        replica: PgInstance = primary.start_standby()
        try:
            url = primary.create_database("lag")
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(TABLE)
            primary.wait_until_replayed_by(replica)
            lines = [
                f"replica lag: a row committed on the primary, until the replica shows it ({args.probes} probes idle)"
            ]
            with (
                psycopg.connect(url, autocommit=True) as main,
                psycopg.connect(replica.url("lag"), autocommit=True) as standby,
            ):
                alone = [probe(main, None) for _ in range(args.probes)]
                idle = [probe(main, standby) for _ in range(args.probes)]
                lines.append(f"  reference, the commit alone:     {summary(alone)}")
                lines.append(f"  idle, until seen on the replica: {summary(idle)}")
                log(f"{args.writers} writers for {args.seconds:.0f} s")
                loaded, rate = under_load(url, args.writers, args.seconds, lambda: probe(main, standby, pause=0.0005))
                lines.append(f"  under {rate:,.0f} one-row inserts/s from {args.writers} clients: {summary(loaded)}")
            return "\n".join(lines)
        finally:
            replica.destroy()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--probes", type=int, default=200, help="probes with nothing else running (200)")
    parser.add_argument("--writers", type=int, default=2, help="clients inserting during the loaded phase (2)")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds of the loaded phase (20)")
    args = parser.parse_args(argv)

    def go(_tmp: Path) -> bool:
        print(run(args), flush=True)
        return True

    return run_bench(go)


if __name__ == "__main__":
    sys.exit(main())
