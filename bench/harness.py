"""What the benchmarks share: a fresh database, the app served by gunicorn, a small asyncio HTTP
client, wrk's figures, the CPU each group of processes used, and report helpers.

Imported by the scripts beside it (`python bench/payments_api.py` puts bench/ on sys.path).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import glob
import math
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit, urlunsplit

try:
    import psycopg
    from psycopg import sql
except ImportError:
    sys.exit("the benchmarks need the project's dependencies (psycopg): activate its virtualenv first")

REPO_ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
HEALTH_PATH = "/healthz"
# Threads per gthread worker as deployed: gunicorn.conf.py's, from the same variable.
DEPLOYED_THREADS = int(os.environ.get("GUNICORN_THREADS", "4"))
PLAYPAY_APP = "playpay.wsgi:application"
REQUEST_TIMEOUT_S = 30.0


class SetupError(Exception):
    """The benchmark could not be set up or run; the figures would mean nothing."""


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending list; NaN when empty."""
    if not sorted_values:
        return math.nan
    rank = max(math.ceil(pct / 100 * len(sorted_values)), 1)
    return sorted_values[rank - 1]


# --- CPU use by group -----------------------------------------------------------------------


@dataclass
class CpuUse:
    """CPU seconds used while a phase ran, by group: app (gunicorn), postgres, redis, client, other."""

    seconds: collections.defaultdict[str, float] = field(default_factory=lambda: collections.defaultdict(float))
    machine_busy_s: float | None = None  # user + system + steal time of all CPUs, when it can be trusted
    elapsed_s: float = 0.0

    @property
    def other_cpus(self) -> float:
        """How many CPUs processes outside the benchmark kept busy on average: 0 on an idle machine."""
        if self.elapsed_s <= 0:
            return 0.0
        other = self.seconds["other"]
        if self.machine_busy_s is not None:
            ours = sum(value for group, value in self.seconds.items() if group != "other")
            other = max(other, self.machine_busy_s - ours)
        return other / self.elapsed_s


def _machine_busy_seconds() -> float:
    """Time all CPUs spent in user, system and steal (another guest on the host); not interrupts."""
    user, nice, system, _idle, _iowait, _irq, _softirq, steal = (
        int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    )
    return (user + nice + system + steal) / os.sysconf("SC_CLK_TCK")


def _process_group(pid: int, command: str, pgid: int, server_pgid: int, db_name: str) -> str:
    if pid == os.getpid() or command in ("wrk", "pgbench"):
        return "client"
    if pgid == server_pgid:
        return "app"
    if command == "redis-server":
        return "redis"
    if command == "postgres":
        # A backend's title is "postgres: <cluster>: <user> <database> <host>(<port>) <state>".
        title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").split()
        is_backend = len(title) >= 5 and title[0] == "postgres:" and ("(" in title[4] or title[4] == "[local]")
        # The benchmark's databases: db_name and those named after it (its journal's).
        ours = title[3] == db_name or title[3].startswith(db_name + "_") if is_backend else True
        return "postgres" if ours else "other"
    return "other"


def _cpu_ticks(server_pgid: int, db_name: str) -> dict[int, tuple[str, int]]:
    ticks: dict[int, tuple[str, int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):  # processes come and go
            text = stat.read_text()
            command = text[text.index("(") + 1 : text.rindex(")")]
            rest = text[text.rindex(")") + 2 :].split()
            pid = int(stat.parent.name)
            group = _process_group(pid, command, int(rest[2]), server_pgid, db_name)
            ticks[pid] = (group, int(rest[11]) + int(rest[12]))
    return ticks


@contextlib.contextmanager
def measure_cpu(server_pgid: int, db_name: str, *, our_processes_persist: bool = True) -> Iterator[CpuUse]:
    """CPU time used while the block runs, by group (Linux; elsewhere it stays empty).

    Per process, it counts those alive at the end (one started meanwhile with all its time) and the
    children that ended (wrk, pgbench). "other" is then the machine's busy time minus the benchmark's,
    which also catches other processes that came and went, unless `our_processes_persist` is false
    (pgbench's server backends end with it): then "other" counts only the other processes still alive.
    """
    use = CpuUse()
    if not Path("/proc/stat").exists():
        yield use
        return
    start, busy, before = time.monotonic(), _machine_busy_seconds(), _cpu_ticks(server_pgid, db_name)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    yield use
    children_end = resource.getrusage(resource.RUSAGE_CHILDREN)
    after, busy_end = _cpu_ticks(server_pgid, db_name), _machine_busy_seconds()
    tick = os.sysconf("SC_CLK_TCK")
    for pid, (group, value) in after.items():
        use.seconds[group] += max(value - before.get(pid, (group, 0))[1], 0) / tick
    use.seconds["client"] += (children_end.ru_utime - children.ru_utime) + (children_end.ru_stime - children.ru_stime)
    use.machine_busy_s = busy_end - busy if our_processes_persist else None
    use.elapsed_s = time.monotonic() - start


# --- Subprocesses, database, server -------------------------------------------------------------


def db_url(base_url: str, name: str) -> str:
    parts = urlsplit(base_url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, ""))


def app_env(database_url: str, cache_url: str, secret_key: str, broker_url: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "DATABASE_URL": database_url,
            "CACHE_URL": cache_url,
            "DEBUG": "false",
            "SECRET_KEY": secret_key,
            "ALLOWED_HOSTS": f"{HOST},localhost",
            "API_RATE_LIMIT_PER_MINUTE": "100000000",
            # As deployed: the carrier work is queued on the broker for the carrier workers (not run
            # here); an empty URL runs it in-process inside each request, as the embedded default does.
            "CELERY_BROKER_URL": broker_url,
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.pop("DJANGO_SETTINGS_MODULE", None)
    return env


def manage(args: list[str], env: dict[str, str], *, timeout_s: float = 600.0) -> str:
    """Run manage.py with the current interpreter; its stdout, or SetupError with its output."""
    command = [sys.executable, str(REPO_ROOT / "manage.py"), *args]
    done = subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout_s, check=False
    )
    if done.returncode != 0:
        output = "\n".join((done.stdout + done.stderr).splitlines()[-60:])
        raise SetupError(f"manage.py {' '.join(args)} failed ({done.returncode}), its last lines:\n{output}")
    return done.stdout


def recreate_database(base_url: str, name: str) -> None:
    drop_database(base_url, name)
    with psycopg.connect(db_url(base_url, "postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def drop_database(base_url: str, name: str) -> None:
    with psycopg.connect(db_url(base_url, "postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def describe_server(workers: int, worker_class: str, threads: int) -> str:
    threads_text = f" x {threads} threads" if worker_class == "gthread" else ""
    return f"gunicorn {workers} x {worker_class} workers{threads_text}"


class Server:
    """gunicorn serving `app` (PlayPay's by default) in its own session, its output in `log_path`; with
    gunicorn.conf.py, as deployed. `app` may name a module beside these scripts (bench/)."""

    def __init__(
        self,
        *,
        env: dict[str, str],
        workers: int,
        log_path: Path,
        worker_class: str = "gthread",
        threads: int = DEPLOYED_THREADS,
        app: str = PLAYPAY_APP,
    ) -> None:
        self.port = free_port()
        self.log_path = log_path
        self.description = describe_server(workers, worker_class, threads)
        command = [
            sys.executable,
            "-m",
            "gunicorn",
            app,
            "--bind",
            f"{HOST}:{self.port}",
            "--workers",
            str(workers),
            "--worker-class",
            worker_class,
            "--timeout",
            "60",
            "--graceful-timeout",
            "5",
            "--log-level",
            "info",
        ]
        # gunicorn.conf.py asks for threads, and gunicorn turns a sync worker with threads into gthread: a sync
        # worker is asked for with one thread.
        command += ["--threads", str(threads if worker_class == "gthread" else 1)]
        if app != PLAYPAY_APP:  # a module beside these scripts
            command += ["--pythonpath", str(Path(__file__).resolve().parent)]
        self._log_file: IO[bytes] = log_path.open("wb")
        self.process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=self._log_file, stderr=subprocess.STDOUT, start_new_session=True
        )

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SetupError(f"gunicorn exited with {self.process.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(OSError):
                status = asyncio.run(single_request(self.port, health_request(self.port)))
                if status == 200:
                    return
            time.sleep(0.2)
        raise SetupError(f"gunicorn did not answer {HEALTH_PATH} within {timeout_s:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        self._log_file.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        # Workers are in the master's process group; none should outlive it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self._log_file.close()


_LOG_PREFIX = re.compile(r"^(\[[^]]*\] \[\d+\] |\d{4}-\d\d-\d\d [\d:,]+ )")
_ERROR_MARKERS = (" ERROR ", "[ERROR]", "[CRITICAL]", "WORKER TIMEOUT")
_CHAIN_LINES = ("The above exception", "During handling of the above exception")


def server_errors(log_path: Path, traceback_lines: int = 50) -> str:
    """A summary of the errors in the server log: each distinct error line or exception with its count,
    then the end of the first (possibly chained) traceback. Empty when the log shows none."""
    counts: collections.Counter[str] = collections.Counter()
    first: list[str] = []
    state = "before"  # first traceback: before, inside, after (its exception line), done
    in_traceback = False
    for line in log_path.read_text(errors="replace").splitlines():
        indented_or_blank = line.startswith((" ", "\t")) or not line.strip()
        if line.startswith("Traceback (most recent call last):"):
            in_traceback = True
        elif in_traceback and not indented_or_blank and not line.startswith(_CHAIN_LINES):
            counts[line.strip()[:200]] += 1  # the exception line that closes a traceback
            in_traceback = False
        elif any(marker in line for marker in _ERROR_MARKERS):
            counts[_LOG_PREFIX.sub("", line).strip()[:200]] += 1

        if state == "before" and in_traceback:
            state = "inside"
        elif state == "after" and (in_traceback or _LOG_PREFIX.match(line)):
            state = "inside" if in_traceback else "done"  # a chained traceback, or the next log record
        if state in ("inside", "after"):
            first.append(line)
            if state == "inside" and not in_traceback:
                state = "after"
    if not counts:
        return ""
    while first and not first[-1].strip():
        first.pop()
    summary = [f"  {count:6d} x {text}" for text, count in counts.most_common(15)]
    first = [line for line in first if line.strip(" ^~")]  # drop the caret-marker lines
    shown = first[-traceback_lines:]
    header = "  first traceback" + (" (its last lines)" if len(first) > len(shown) else "") + ":"
    return "\n".join([*summary, header, *(f"    {line}" for line in shown)])


def get_request(port: int, path: str, *, close: bool = False) -> bytes:
    """A GET of `path`, on a connection kept alive unless `close`."""
    closing = "Connection: close\r\n" if close else ""
    return f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n{closing}\r\n".encode("ascii")


def health_request(port: int) -> bytes:
    return get_request(port, HEALTH_PATH, close=True)


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool, bytes]:
    """Read one response; (status, whether the connection may be reused, body)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in header_lines:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    keep_alive = headers.get("connection", "").lower() != "close"
    body = b""
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunks.append((await reader.readexactly(size + 2))[:-2])
            if size == 0:
                break
        body = b"".join(chunks)
    else:
        body = await reader.read()
        keep_alive = False
    return status, keep_alive, body


async def single_request(port: int, payload: bytes) -> int:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(payload)
        await writer.drain()
        status, _, _ = await asyncio.wait_for(read_response(reader), REQUEST_TIMEOUT_S)
        return status
    finally:
        writer.close()


class ConnectionPool:
    """Reuses keep-alive connections (gthread workers); opens a new one when the server closed it (sync)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def request(self, payload: bytes) -> int:
        status, _ = await self.exchange(payload)
        return status

    async def exchange(self, payload: bytes) -> tuple[int, bytes]:
        """Send one request; (status, body) of its response."""
        reused = bool(self._idle)
        reader, writer = self._idle.pop() if reused else await asyncio.open_connection(HOST, self.port)
        try:
            writer.write(payload)
            await writer.drain()
            status, keep_alive, body = await read_response(reader)
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            writer.close()
            nothing_read = not isinstance(exc, asyncio.IncompleteReadError) or not exc.partial
            if reused and nothing_read:  # an idle keep-alive connection the server had closed
                return await self.exchange(payload)
            raise
        except BaseException:
            writer.close()
            raise
        if keep_alive:
            self._idle.append((reader, writer))
        else:
            writer.close()
        return status, body

    def close(self) -> None:
        for _, writer in self._idle:
            writer.close()
        self._idle.clear()


# --- wrk ----------------------------------------------------------------------------------------

UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def wrk_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not match:
        raise SetupError(f"unexpected wrk latency {text!r}")
    return float(match.group(1)) * UNITS_MS[match.group(2)]


def find_pgbench() -> str | None:
    found = shutil.which("pgbench")
    if found:
        return found
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pgbench"), reverse=True)
    return candidates[0] if candidates else None


# --- Report -------------------------------------------------------------------------------------


OTHER_LOAD_WARNING_CPUS = 0.15


def other_load_lines(cpu: CpuUse | None) -> list[str]:
    if cpu is None or cpu.elapsed_s == 0:
        return []
    line = f"  other load on machine   {cpu.other_cpus:9.2f} CPUs"
    if cpu.other_cpus > OTHER_LOAD_WARNING_CPUS:
        line += "  (WARNING: other processes competed for the CPUs; figures are low)"
    return [line]


def server_cpu_lines(cpu: CpuUse | None, requests: float, unit: str = "request", rate_unit: str = "req/s") -> list[str]:
    """Server CPU per request (or other unit), and the rate those CPUs would allow if the server had the
    machine alone."""
    if cpu is None or cpu.elapsed_s == 0 or requests == 0:
        return []
    per_request = {group: cpu.seconds[group] * 1000 / requests for group in ("app", "postgres", "redis")}
    total = sum(per_request.values())
    cpus = os.cpu_count() or 1
    label = f"server CPU per {unit}"
    return [
        f"  {label:<23} {total:9.1f} ms   (gunicorn {per_request['app']:.1f}, "
        f"PostgreSQL {per_request['postgres']:.1f}, Redis {per_request['redis']:.1f})",
        f"  CPU-bound ceiling       {cpus * 1000 / total:9.1f} {rate_unit}  "
        f"(all {cpus} CPUs for the server, no client)",
    ]


def verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Clean up on SIGTERM as on Ctrl-C."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_bench(run: Callable[[Path], bool]) -> int:
    """A benchmark's exit status: `run(tmp)` prints its report and says whether its checks held.

    0 when the run completed (whatever the figures: it is a report) and its checks held, 1 when a
    check failed, 2 when the setup failed, 130 when interrupted (Ctrl-C or SIGTERM).
    """
    try:
        with sigterm_as_interrupt(), tempfile.TemporaryDirectory(prefix="playpay-bench-") as tmp:
            ok = run(Path(tmp))
    except SetupError as exc:
        print(f"bench setup failed: {exc}", file=sys.stderr)
        return 2
    except psycopg.Error as exc:
        print(f"bench failed (PostgreSQL): {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench interrupted", file=sys.stderr)
        return 130
    return 0 if ok else 1
