"""The journal's scrape-time metric: how many records wait in this host's spool for the journal store."""

from journal.services import journal_spool
from playpay import metrics

# The count stops here: past it the answer is "very many" and counting further would only cost more.
SPOOL_COUNT_CAP = 100_000


def spool_depth() -> int:
    return journal_spool().depth(cap=SPOOL_COUNT_CAP)


def register() -> None:
    metrics.register_gauge(
        "playpay_journal_spool_depth",
        "Journal records spooled on this host's disk (JOURNAL_SPOOL_DIR), waiting for the journal store "
        f"(counted up to {SPOOL_COUNT_CAP}).",
        spool_depth,
    )
