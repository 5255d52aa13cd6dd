"""Public identifiers of new rows: UUIDv7 (RFC 9562), time-ordered.

A UUIDv7 starts with its creation time in milliseconds, so the ids of new rows sort after the older ones and
their unique index takes inserts on its rightmost pages (hot in memory) instead of on a random page of an
index much larger than memory, as random (v4) ids do. Ids are still 122 bits of which 74 random: not
guessable. Rows made before keep their v4 ids; both read and compare alike.
"""

import uuid
from datetime import UTC, datetime

from uuid_utils.compat import uuid7


def new_public_id(at: datetime | None = None) -> uuid.UUID:
    """A new UUIDv7, of now or of the moment `at` (a row made for that time: imported, generated, backdated)."""
    if at is None:
        return uuid7()
    return uuid7(nanoseconds=int(at.timestamp() * 1_000_000) * 1000)


def time_of(public_id: uuid.UUID) -> datetime | None:
    """When a UUIDv7 was made (to the millisecond); None for an id of another version (the older v4 ids)."""
    if public_id.version != 7:
        return None
    return datetime.fromtimestamp((public_id.int >> 80) / 1000, tz=UTC)


def prefix_range(prefix: str) -> tuple[uuid.UUID, uuid.UUID]:
    """The lowest and the highest id starting with `prefix` (hex digits, no dashes, 1 to 32 of them): an id
    typed in part is searched as this range, which the unique index on the ids serves."""
    missing = 32 - len(prefix)
    return uuid.UUID(hex=prefix + "0" * missing), uuid.UUID(hex=prefix + "f" * missing)
