"""gunicorn reads this file from the working directory.

With PROMETHEUS_MULTIPROC_DIR set, every worker writes its metrics there and /metrics adds them up:
the directory is emptied when gunicorn starts (values of a previous run must not be added), and a
worker that exits is marked dead. See docs/operations.md, "Metrics".
"""

import os
from pathlib import Path
from typing import Any


def on_starting(server: Any) -> None:
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
    if directory:
        Path(directory).mkdir(parents=True, exist_ok=True)
        for stale in Path(directory).glob("*.db"):
            stale.unlink()


def child_exit(server: Any, worker: Any) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]
