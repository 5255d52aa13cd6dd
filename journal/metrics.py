"""The journal's scrape-time metric: how many records wait in the spool for the journal store."""

from journal.models import JournalSpool
from playpay import metrics

# The count stops here: past it the answer is "very many" and counting further would only cost more.
SPOOL_COUNT_CAP = 100_000


def spool_depth() -> int:
    return JournalSpool.objects.all()[:SPOOL_COUNT_CAP].count()


def register() -> None:
    metrics.register_gauge(
        "playpay_journal_spool_depth",
        "Journal records spooled in the main database, waiting for the journal store "
        f"(counted up to {SPOOL_COUNT_CAP}).",
        spool_depth,
    )
