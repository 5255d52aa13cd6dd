"""Funnel reports computed by ClickHouse (ANALYTICS_BACKEND=clickhouse), from the shipped events.

A journey's level is ClickHouse's own `windowFunnel(window)` (default mode) over its events. Events with
the same timestamp are taken in step order there (the function sorts by (time, step)), so one timestamp
can satisfy consecutive steps. The report also needs the times of the best chain (gaps between steps)
and its start (the exclusion step is looked for in [start, start + window]): array functions over the
journey's events, sorted the same way, compute them level by level (the latest chain start per level; the
chain's first event of each step), the chain PostgreSQL's `funnel.sql` finds by binary search. The rows
returned have the shape of `funnel.sql.report_query`'s, so that the counts, and the report built from
them, come out the same from either store.
"""

from collections import Counter
from datetime import datetime
from typing import Any

from funnel.analytics import clickhouse
from funnel.sql import FunnelScope

GROUPS = {
    None: "''",
    "app": "toString(app_id)",
    "carrier": "carrier",
    "country": "country",
    "price_point": "price_point",
    "flow": "flow",
}

# s: per event, the start of the latest chain that its step extends, or -1. Level by level:
# a step-k event extends the latest chain that reached step k-1 before it (arrayFill carries the last one
# forward), when within the window of that chain's start. One subquery per level, so that each level's
# array is computed once.
NEXT_LEVEL = """
    SELECT grp, level, ts, ks,
           arrayMap((t, k, s, chain) -> if(k = {level}, if(chain >= 0 AND t <= chain + {window_us}, chain, -1), s),
                    ts, ks, s{previous},
                    arrayFill(x -> x >= 0, arrayMap((k, s) -> if(k = {previous}, s, -1), ks, s{previous}))) AS s{level}
    FROM ({source})"""

FIRST_LEVEL = """
    SELECT grp, level, arrayMap(e -> e.1, sequence) AS ts, arrayMap(e -> e.2, sequence) AS ks,
           arrayMap((t, k) -> if(k = 1, t, -1), ts, ks) AS s1
    FROM sequences"""

REPORT = """
WITH journeys AS (
    SELECT app_id, journey_id, {group} AS grp
    FROM {db}.funnel_journeys FINAL
    WHERE started_at >= {{since:DateTime64(6, 'UTC')}} AND started_at < {{until:DateTime64(6, 'UTC')}}{app_filter}
),
sequences AS (
    SELECT app_id, journey_id, any(grp) AS grp,
           windowFunnel({window_us})(toUInt64(t), {conditions}) AS level,
           arraySort(groupArray((t, k))) AS sequence
    FROM (
        SELECT app_id, journey_id, toUnixTimestamp64Micro(occurred_at) AS t,
               toUInt8(indexOf({{steps:Array(String)}}, step)) AS k
        FROM {db}.funnel_events
        WHERE occurred_at >= {{since:DateTime64(6, 'UTC')}}
          AND (has({{steps:Array(String)}}, step) OR step = {{exclusion:String}}){app_filter}
    ) AS events
    INNER JOIN journeys USING (app_id, journey_id)
    GROUP BY app_id, journey_id
),
results AS (
    -- `start` comes from the subquery: an alias used inside a lambda would be computed again per element.
    SELECT grp, level,
           arraySlice([{step_times}], 1, level) AS times,
           -- Lambda first: after AND, short-circuit evaluation would make it several times slower.
           arrayExists((t, k) -> k = 0 AND t >= start AND t <= start + {window_us}, ts, ks) AND level > 0 AS excluded
    FROM (
        SELECT *, arrayMax(arrayMap((k, s) -> if(k = level, s, -1), ks, s{steps})) AS start
        FROM ({passes})
    )
)
-- One pass: journeys per group, level and exclusion, with the histogram of whole seconds between steps
-- (keyed step * 2^32 + seconds) of the journeys not excluded.
SELECT grp, level, excluded, count(),
       sumMapIf(arrayMap((gap, step) -> step * 4294967296 + intDiv(gap, 1000000),
                         arrayPopFront(arrayDifference(times)), range(2, level + 1)),
                arrayMap(step -> toUInt64(1), range(2, level + 1)), NOT excluded)
FROM results
GROUP BY grp, level, excluded
"""

FAILURES = """
SELECT error_code, count() FROM {db}.funnel_events FINAL
WHERE step = 'charge_failed' AND error_code != ''
  AND occurred_at >= {{since:DateTime64(6, 'UTC')}} AND occurred_at < {{until:DateTime64(6, 'UTC')}}{app_filter}
GROUP BY error_code
"""


def _app_filter(app_id: int | None) -> str:
    return "\n      AND app_id = {app_id:UInt32}" if app_id is not None else ""


def _client(timeout_ms: int | None) -> Any:
    return clickhouse.client(timeout_s=None if timeout_ms is None else timeout_ms / 1000)


def _passes(steps: int, window_us: int) -> str:
    source = FIRST_LEVEL
    for level in range(2, steps + 1):
        source = NEXT_LEVEL.format(level=level, previous=level - 1, window_us=window_us, source=source)
    return source


def report_rows(
    scope: FunnelScope, *, breakdown: str | None, timeout_ms: int | None = None
) -> list[tuple[str, str, int, int, int]]:
    """Rows ('reached', group, level, excluded, journeys) and ('gap', '', step, whole seconds, journeys)
    for the journeys that started in [since, until), as `funnel.sql.report_query` gives them; `timeout_ms`
    bounds the statement (else CLICKHOUSE_QUERY_TIMEOUT; `clickhouse.is_timeout` tells its error)."""
    window_us = int(scope.window.total_seconds() * 1_000_000)
    query = REPORT.format(
        db=clickhouse.database(),
        group=GROUPS[breakdown],
        app_filter=_app_filter(scope.app_id),
        window_us=window_us,
        conditions=", ".join(f"k = {level}" for level in range(1, len(scope.steps) + 1)),
        passes=_passes(len(scope.steps), window_us),
        steps=len(scope.steps),
        step_times=", ".join(
            f"arrayFirst((t, k, s) -> k = {step} AND s = start, ts, ks, s{len(scope.steps)})"
            for step in range(1, len(scope.steps) + 1)
        ),
    )
    parameters: dict[str, Any] = {
        "since": scope.since,
        "until": scope.until,
        "steps": list(scope.steps),
        "exclusion": scope.exclusion,
        "app_id": scope.app_id,
    }
    rows: list[tuple[str, str, int, int, int]] = []
    gaps: Counter[tuple[int, int]] = Counter()
    for group, level, excluded, journeys, (keys, counts) in (
        _client(timeout_ms).query(query, parameters=parameters).result_rows
    ):
        rows.append(("reached", group, int(level), int(excluded), int(journeys)))
        for key, count in zip(keys, counts, strict=True):
            gaps[divmod(int(key), 2**32)] += int(count)
    return rows + [("gap", "", step, seconds, journeys) for (step, seconds), journeys in sorted(gaps.items())]


def failure_codes(
    *, since: datetime, until: datetime, app_id: int | None = None, timeout_ms: int | None = None
) -> dict[str, int]:
    """Error codes of the charges that failed in [since, until), with how many."""
    query = FAILURES.format(db=clickhouse.database(), app_filter=_app_filter(app_id))
    result = _client(timeout_ms).query(query, parameters={"since": since, "until": until, "app_id": app_id})
    return {code: int(count) for code, count in result.result_rows}
