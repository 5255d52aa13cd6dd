"""Long-running processes of a deployment, each in its own process group, with bounded waits.

`Processes` starts commands with their output in a log file each; leaving it stops every process (SIGTERM to
its group, bounded wait, then SIGKILL) and, when the block failed, prints the last lines of each log, which
pytest shows with the failure.
"""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, TypeVar

T = TypeVar("T")


def service_env() -> dict[str, str]:
    """Only what a service manager would give a process: not this suite's SANDBOX=true nor its database settings."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TZ")
    env = {key: value for key, value in os.environ.items() if key in keep}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def free_port() -> int:
    """A loopback port nobody listens on now (the kernel's pick for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(what: str, probe: Callable[[], T | None], *, timeout: float, interval: float = 0.2) -> T:
    """probe()'s first truthy answer, polled until `timeout` seconds; AssertionError naming `what` after that.
    An exception of the probe counts as no answer yet (a server still starting refuses connections)."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            result = probe()
        except Exception as exc:
            result, last_error = None, exc
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s (last error: {last_error!r})")
        time.sleep(interval)


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]
    returncode: int | None = None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def assert_running(self) -> None:
        self.log_file.flush()
        code = self.popen.poll()
        assert code is None, f"{self.name} exited with {code}:\n{self.tail()}"


@dataclass
class Processes:
    """Processes started in `cwd`, each in its own session (process group) with its log file in `log_dir`."""

    log_dir: Path
    cwd: Path
    started: list[Process] = field(default_factory=list)

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> Process:
        log_path = self.log_dir / f"{name}.log"
        log_file = log_path.open("wb")
        popen = subprocess.Popen(
            argv, cwd=self.cwd, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
        process = Process(name, popen, log_path, log_file)
        self.started.append(process)
        return process

    def stop(self, *stopping: Process, timeout: float) -> dict[str, tuple[int, float]]:
        """SIGTERM to each process (its own shutdown stops its children), then at most `timeout` seconds for them
        and every process of their groups to exit: {name: (exit code, seconds after SIGTERM it was seen gone)}.
        Any still there are killed, and the AssertionError says which."""
        began = time.monotonic()
        deadline = began + timeout
        for process in stopping:
            if process.returncode is None and process.popen.poll() is None:
                process.popen.send_signal(signal.SIGTERM)
        results, late = {}, []
        for process in stopping:
            pgid = process.popen.pid  # start_new_session: the leader's pid is its group's id
            try:
                process.returncode = process.popen.wait(timeout=max(deadline - time.monotonic(), 0.1))
                wait_for(
                    f"{process.name}'s children to exit",
                    lambda pgid=pgid: not _group_alive(pgid),  # type: ignore[misc]
                    timeout=max(deadline - time.monotonic(), 0.5),
                    interval=0.05,
                )
            except (subprocess.TimeoutExpired, AssertionError):
                _kill_group(pgid)
                process.returncode = process.popen.wait(timeout=10)
                late.append(f"{process.name} (killed):\n{process.tail()}")
            finally:
                process.log_file.close()
            results[process.name] = (process.returncode, round(time.monotonic() - began, 1))
        assert not late, f"not stopped within {timeout:g} s of SIGTERM: " + "\n".join(late)
        return results

    def tails(self) -> str:
        return "\n".join(f"----- last lines of {p.name} ({p.log_path.name}) -----\n{p.tail()}" for p in self.started)

    def __enter__(self) -> "Processes":
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        failed = exc_type is not None
        if failed:
            print(self.tails())  # pytest shows it with the failure
        running = [process for process in self.started if process.returncode is None]
        try:
            self.stop(*running, timeout=15)
        except AssertionError as error:
            print(error)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
