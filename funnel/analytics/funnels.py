"""Funnel reports computed by ClickHouse (ANALYTICS_BACKEND=clickhouse), from the shipped events.

A journey's level is ClickHouse's own `windowFunnel(window)` (default mode) over its events. Events with
the same timestamp are taken in step order there (the function sorts by (time, step)), so one timestamp
can satisfy consecutive steps. The report also needs the times of the best chain (gaps between steps)
and its start (the exclusion step is looked for in [start, start + window]); `arrayFold` replays the same
walk over the journey's events sorted the same way, keeping for each level the latest chain start that
reached it and the times of that chain's steps when it first got there, as `funnel.sql` does on
PostgreSQL. The rows returned have the shape of `funnel.sql.report_query`'s, so that the counts, and the
report built from them, come out the same from either store.
"""

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

# acc: (latest chain start per level, or -1; the times of that chain's steps), e: (time in µs, step or 0).
STEP = """
(acc, e) -> if(e.2 = 0, acc, if(e.2 = 1,
    (arrayMap((v, i) -> if(i = 1, e.1, v), acc.1, arrayEnumerate(acc.1)),
     arrayMap((v, i) -> if(i = 1, [e.1], v), acc.2, arrayEnumerate(acc.2))),
    if(acc.1[e.2 - 1] >= 0 AND e.1 <= acc.1[e.2 - 1] + {window_us} AND acc.1[e.2] != acc.1[e.2 - 1],
       (arrayMap((v, i) -> if(i = e.2, acc.1[e.2 - 1], v), acc.1, arrayEnumerate(acc.1)),
        arrayMap((v, i) -> if(i = e.2, arrayPushBack(acc.2[e.2 - 1], e.1), v), acc.2, arrayEnumerate(acc.2))),
       acc)))
"""

REPORT = """
WITH journeys AS (
    SELECT app_id, journey_id, {group} AS grp
    FROM {db}.funnel_journeys FINAL
    WHERE started_at >= {{since:DateTime64(6, 'UTC')}} AND started_at < {{until:DateTime64(6, 'UTC')}}{app_filter}
),
events AS (
    SELECT app_id, journey_id, toUnixTimestamp64Micro(occurred_at) AS ts,
           toUInt8(indexOf({{steps:Array(String)}}, step)) AS k
    FROM {db}.funnel_events
    WHERE occurred_at >= {{since:DateTime64(6, 'UTC')}} AND occurred_at < {{horizon:DateTime64(6, 'UTC')}}
      AND (has({{steps:Array(String)}}, step) OR step = {{exclusion:String}}){app_filter}
      AND (app_id, journey_id) IN (SELECT app_id, journey_id FROM journeys)
),
levels AS (
    SELECT app_id, journey_id,
           windowFunnel({window_us})(toUInt64(ts), {conditions}) AS level,
           arraySort(groupArray((ts, k))) AS seq
    FROM events
    GROUP BY app_id, journey_id
),
chains AS (
    SELECT app_id, journey_id, level, seq,
           arrayFold({step}, seq, (arrayWithConstant({levels}, toInt64(-1)),
                                   arrayWithConstant({levels}, CAST([], 'Array(Int64)')))) AS state
    FROM levels
),
results AS (
    SELECT journeys.grp AS grp, chains.level AS level, chains.state.2[chains.level] AS times,
           chains.level > 0 AND arrayExists(
               e -> e.2 = 0 AND e.1 >= chains.state.1[chains.level]
                   AND e.1 <= chains.state.1[chains.level] + {window_us}, chains.seq) AS excluded
    FROM chains INNER JOIN journeys USING (app_id, journey_id)
)
SELECT 'reached' AS kind, grp, toInt64(level) AS level, toInt64(excluded) AS value, count() AS journeys
FROM results GROUP BY grp, level, excluded
UNION ALL
SELECT 'gap', '', toInt64(step), toInt64(intDiv(times[step] - times[step - 1], 1000000)) AS seconds, count()
FROM results ARRAY JOIN arrayEnumerate(times) AS step
WHERE NOT excluded AND step >= 2
GROUP BY step, seconds
"""

FAILURES = """
SELECT error_code, count() FROM {db}.funnel_events FINAL
WHERE step = 'charge_failed' AND error_code != ''
  AND occurred_at >= {{since:DateTime64(6, 'UTC')}} AND occurred_at < {{until:DateTime64(6, 'UTC')}}{app_filter}
GROUP BY error_code
"""


def _app_filter(app_id: int | None) -> str:
    return "\n      AND app_id = {app_id:UInt32}" if app_id is not None else ""


def report_rows(scope: FunnelScope, *, breakdown: str | None) -> list[tuple[str, str, int, int, int]]:
    """Rows ('reached', group, level, excluded, journeys) and ('gap', '', step, whole seconds, journeys)
    for the journeys that started in [since, until), as `funnel.sql.report_query` gives them."""
    window_us = int(scope.window.total_seconds() * 1_000_000)
    query = REPORT.format(
        db=clickhouse.database(),
        group=GROUPS[breakdown],
        app_filter=_app_filter(scope.app_id),
        window_us=window_us,
        conditions=", ".join(f"k = {level}" for level in range(1, len(scope.steps) + 1)),
        levels=len(scope.steps),
        step=STEP.format(window_us=window_us),
    )
    parameters: dict[str, Any] = {
        "since": scope.since,
        "until": scope.until,
        # The events PostgreSQL reads for the same report (funnel.sql): up to one window after the period.
        "horizon": scope.until + scope.window,
        "steps": list(scope.steps),
        "exclusion": scope.exclusion,
        "app_id": scope.app_id,
    }
    result = clickhouse.client().query(query, parameters=parameters)
    return [
        (kind, group, int(level), int(value), int(journeys))
        for kind, group, level, value, journeys in result.result_rows
    ]


def failure_codes(*, since: datetime, until: datetime, app_id: int | None = None) -> dict[str, int]:
    """Error codes of the charges that failed in [since, until), with how many."""
    query = FAILURES.format(db=clickhouse.database(), app_filter=_app_filter(app_id))
    result = clickhouse.client().query(query, parameters={"since": since, "until": until, "app_id": app_id})
    return {code: int(count) for code, count in result.result_rows}
