"""gunicorn reads this file from the working directory; command-line options override it.

Workers are threaded (gthread, GUNICORN_THREADS threads each, 4 by default): a request that waits
(a PIN confirm waits up to PIN_CONFIRM_WAIT_MS for the carrier queue's verdict) holds one thread, not
a whole worker, so waiting confirms cannot starve other endpoints. Each thread keeps its own database
connections (default and journal): size PostgreSQL's max_connections for workers x threads x 2 per
node. See docs/operations.md, "Web workers".

With PROMETHEUS_MULTIPROC_DIR set, every worker writes its metrics there and /metrics adds them up:
the directory is emptied when gunicorn starts (values of a previous run must not be added), and a
worker that exits is marked dead. See docs/operations.md, "Metrics".
"""

import os
from pathlib import Path
from typing import Any

worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "4"))


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
