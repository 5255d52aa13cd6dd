"""A private PostgreSQL server for one test or benchmark: its own data directory and port, trust auth on
loopback, which the caller may stop abruptly, start again, or freeze (SIGSTOP) and thaw, without touching the
suite's own server.

PostgreSQL refuses to run as root: when this process is root, the server's commands run as the `postgres`
user (runuser), in a directory under the system's temporary directory that it owns. The binaries are found on
PG_BIN, under /usr/lib/postgresql/<version>/bin (the newest), or beside pg_ctl on PATH.
"""

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
from psycopg import sql

from tests.deploy.processes import free_port, wait_for

SERVER_USER = "postgres"
COMMAND_TIMEOUT_SECONDS = 60


def _bin_dir() -> Path:
    if os.environ.get("PG_BIN"):
        return Path(os.environ["PG_BIN"])
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("pg_ctl")
    assert found, "a private PostgreSQL server needs its binaries: set PG_BIN or install postgresql"
    return Path(found).parent


class PgInstance:
    """One server: `start()`, `stop(mode)`, `freeze()`, `thaw()`, `url(database)`; `destroy()` removes it."""

    def __init__(self, *, port: int | None = None, initdb: bool = True) -> None:
        self.bin = _bin_dir()
        self.port = port or free_port()
        self.as_root = os.geteuid() == 0
        self.root = Path(tempfile.mkdtemp(prefix="playpay-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        if self.as_root:
            account = pwd.getpwnam(SERVER_USER)
            os.chown(self.root, account.pw_uid, account.pw_gid)
        if initdb:
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")

    def start_standby(self) -> "PgInstance":
        """A streaming replica of this started server, started: a base backup taken now (pg_basebackup, as a
        deployment makes one), then in hot standby, replaying what this server commits from then on."""
        replica = PgInstance(initdb=False)
        replica._run(
            "pg_basebackup", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-D", str(replica.data),
            "--wal-method=stream", "--write-recovery-conf", "--no-sync",
        )  # fmt: skip
        replica.start()
        return replica

    def wait_until_replayed_by(self, replica: "PgInstance", timeout: float = 60) -> None:
        """Until `replica` has replayed everything this server has written so far."""
        with psycopg.connect(self.url(), connect_timeout=5) as conn:
            written = conn.execute("SELECT pg_current_wal_lsn()").fetchone()

        def replayed() -> bool:
            with psycopg.connect(replica.url(), connect_timeout=2) as conn:
                row = conn.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", written).fetchone()
                return bool(row and row[0])

        wait_for("the replica to replay the primary's writes", replayed, timeout=timeout)

    def _run(self, program: str, *args: str) -> str:
        argv = [str(self.bin / program), *args]
        if self.as_root:
            argv = ["runuser", "-u", SERVER_USER, "--", *argv]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_SECONDS, cwd=self.root)
        assert done.returncode == 0, f"{program} {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def start(self) -> None:
        # fsync off: an abrupt stop of the server (not of the machine) loses nothing committed, as the
        # operating system still holds what was written; synchronous_commit stays on, so a commit is written.
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.root} "
            "-c fsync=off -c full_page_writes=off -c max_connections=50"
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        """`immediate` is a crash as far as clients see: connections drop, nothing is flushed or said."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def is_running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def postmaster_pid(self) -> int:
        return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])

    def server_pids(self) -> list[int]:
        """The postmaster and every process it started (backends, checkpointer, WAL writer...)."""
        postmaster = self.postmaster_pid()
        pids = [postmaster]
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                text = stat.read_text()
                if int(text[text.rindex(")") + 2 :].split()[1]) == postmaster:
                    pids.append(int(stat.parent.name))
        return pids

    def freeze(self) -> list[int]:
        """SIGSTOP the whole server: it accepts TCP connections (the kernel does) and answers nothing, as a
        server stalled on its disk or a paused virtual machine does. Returns the processes stopped."""
        postmaster = self.postmaster_pid()
        os.kill(postmaster, signal.SIGSTOP)  # first: it starts no process after this
        pids = self.server_pids()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        return pids

    def thaw(self, pids: list[int] | None = None) -> None:
        for pid in pids if pids is not None else self.server_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def url(self, database: str = "postgres") -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.url(), autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def copy_database(self, source_url: str, name: str) -> str:
        """A new database `name` here holding what the database at `source_url` holds (pg_dump | psql)."""
        target = self.create_database(name)
        dump = subprocess.run(
            [str(self.bin / "pg_dump"), "--no-owner", "--no-privileges", source_url],
            capture_output=True,
            timeout=COMMAND_TIMEOUT_SECONDS,
        )
        assert dump.returncode == 0, dump.stderr.decode(errors="replace")
        load = subprocess.run(
            [str(self.bin / "psql"), "-q", "-v", "ON_ERROR_STOP=1", target],
            input=dump.stdout,
            capture_output=True,
            timeout=COMMAND_TIMEOUT_SECONDS,
        )
        assert load.returncode == 0, load.stderr.decode(errors="replace")
        return target

    def wait_until_accepting(self, timeout: float = 30) -> None:
        def accepts() -> bool:
            with psycopg.connect(self.url(), connect_timeout=2) as conn:
                return conn.execute("SELECT 1").fetchone() == (1,)

        wait_for("the private PostgreSQL server to accept connections", accepts, timeout=timeout)

    def destroy(self) -> None:
        if self.is_running():
            self.thaw()  # a frozen server cannot stop
            with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
                self.stop("immediate")
        deadline = time.monotonic() + 10
        while self.is_running() and time.monotonic() < deadline:
            time.sleep(0.1)
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def pg_instance() -> Iterator[PgInstance]:
    """A started private server, removed (stopped first, if need be) when the block ends."""
    instance = PgInstance()
    try:
        instance.start()
        yield instance
    finally:
        instance.destroy()
