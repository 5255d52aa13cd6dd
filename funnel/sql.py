"""windowFunnel in SQL, for PostgreSQL: the store aggregates, Python reads a few hundred rows.

A journey that started in the period is read with all its events from the period's start on (a chain
may begin at any of its step-1 events, however long after the journey's start), in time order, events
at the same instant in step order (as ClickHouse sorts them). ClickHouse's default mode keeps for each
level the start of the latest chain that reached it. Here that is a column `s` computed level by
level with window functions over one sort of the events:

* a step-1 event starts a chain: s = its time;
* a step-k event (k > 1) extends the latest chain that reached level k-1 before it, if it is within
  the window of that chain's start: s = max(s of the step-(k-1) events before it), or NULL when
  that is more than the window before it.

The journey's level is the highest k with some s; its best chain starts at the latest such s among
the level's events (the `start`); that chain's time at step j is the first step-j event whose s is
`start` (the chain's earliest extension, as `funnel.selectors.window_funnel` records it). A journey
with the exclusion step in [start, start + window] is excluded.

The events are sorted once, by journey, time and step; every level is one running window over them.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings


@dataclass(frozen=True)
class FunnelScope:
    """The journeys a funnel computation reads: started in [since, until), of one app or of all, each
    with all its events; `exclusion` (a step, or "") leaves a journey out."""

    steps: list[str]
    window: timedelta
    since: datetime
    until: datetime
    exclusion: str = ""
    app_id: int | None = None


# The period's journeys, with what reports break down by; `jid` is the journey's row id.
JOURNEYS = """
SELECT id AS jid, app_id, journey_id, started_at, carrier, country, price_point, flow
FROM funnel_journey
WHERE started_at >= %(since)s AND started_at < %(until)s{app_filter}
"""

LEVELS = """
SELECT jid, coalesce(max(level), 0) AS level,
       coalesce(bool_or(x AND t >= start AND t <= start + %(window)s), false) AS excluded,
       ARRAY[{times}] AS times
FROM (
    SELECT *, max(s) FILTER (WHERE k = level) OVER journey AS start
    FROM (
        SELECT *, max(k) FILTER (WHERE s IS NOT NULL) OVER journey AS level
        FROM ({passes}) passes
        WINDOW journey AS (PARTITION BY jid)
    ) leveled
    WINDOW journey AS (PARTITION BY jid)
) best
GROUP BY jid
"""

# A journey's events are all at or after its start, so none before the period's start is needed; any
# later one may count (a chain may begin long after its journey did). Joining them to the period's
# journeys first leaves out those of other journeys, and the sort is then on the journey's integer id
# rather than on its text id.
EVENTS = """
SELECT journey.jid, event.occurred_at AS t,
       array_position(%(steps)s::text[], event.step::text) AS k,
       event.step = %(exclusion)s AS x,
       CASE WHEN event.step = %(first_step)s THEN event.occurred_at END AS s
FROM funnel_funnelevent event
JOIN journeys journey ON journey.app_id = event.app_id AND journey.journey_id = event.journey_id
WHERE event.occurred_at >= %(since)s
  AND (event.step = ANY(%(steps)s::text[]) OR event.step = %(exclusion)s){app_filter}
"""

# Events at the same instant are taken in step order (ClickHouse sorts by time, then condition), so
# one instant can satisfy consecutive steps.
NEXT_LEVEL = """
SELECT jid, t, k, x,
       CASE WHEN k = {level} THEN (CASE WHEN t - m <= %(window)s THEN m END) ELSE s END AS s
FROM (
    SELECT *, max(s) FILTER (WHERE k = {previous}) OVER running AS m
    FROM ({source}) level_{previous}
    WINDOW running AS (PARTITION BY jid ORDER BY t, k ROWS UNBOUNDED PRECEDING)
) level_{level}
"""


def _app_filter(scope: FunnelScope, column: str) -> str:
    return f"\n  AND {column} = %(app_id)s" if scope.app_id is not None else ""


def journey_levels(scope: FunnelScope) -> tuple[str, str, dict[str, Any]]:
    """SQL of the period's journeys (for a `journeys` CTE), of one row per such journey with funnel events
    (jid, level 0 to len(steps), excluded, times of the best chain's steps) reading it, and their
    parameters."""
    steps = scope.steps
    source = EVENTS.format(app_filter=_app_filter(scope, "event.app_id"))
    for level in range(2, len(steps) + 1):
        source = NEXT_LEVEL.format(level=level, previous=level - 1, source=source)
    times = ", ".join(f"min(t) FILTER (WHERE k = {k} AND s = start)" for k in range(1, len(steps) + 1))
    params = {
        "steps": list(steps),
        "first_step": steps[0],
        # No event has an empty step: an empty exclusion matches nothing.
        "exclusion": scope.exclusion,
        "window": scope.window,
        "since": scope.since,
        "until": scope.until,
        "app_id": scope.app_id,
    }
    journeys = JOURNEYS.format(app_filter=_app_filter(scope, "app_id"))
    return journeys, LEVELS.format(times=times, passes=source), params


GAP = "floor(extract(epoch FROM times[gap.step] - times[gap.step - 1]))::int"

REPORT = """
WITH journeys AS MATERIALIZED ({journeys}),
levels AS MATERIALIZED ({levels}),
reached AS (
    SELECT {group} AS grp, levels.level, levels.excluded, levels.times
    FROM journeys journey JOIN levels USING (jid)
)
SELECT 'reached', grp, level, excluded::int, count(*) FROM reached GROUP BY grp, level, excluded
UNION ALL
SELECT 'gap', '', gap.step, {gap}, count(*)
FROM levels, generate_series(2, levels.level) AS gap (step)
WHERE NOT levels.excluded
GROUP BY gap.step, 4
"""

GROUPS = {
    None: "''",
    "app": "journey.app_id::text",
    "carrier": "journey.carrier",
    "country": "journey.country",
    "price_point": "journey.price_point",
    "flow": "journey.flow",
}


def report_query(scope: FunnelScope, *, breakdown: str | None) -> tuple[str, dict[str, Any]]:
    """Rows ('reached', group, level, excluded, journeys) and ('gap', '', step, whole seconds, journeys)
    for the journeys that started in [since, until)."""
    journeys, levels, params = journey_levels(scope)
    query = REPORT.format(journeys=journeys, levels=levels, group=GROUPS[breakdown], gap=GAP)
    return query, params


DIMENSIONS = "hour, app_id, carrier, country, price_point, flow"
ROLLUP_JOURNEYS = "funnel_rollup_journeys"

ROLLUP_LEVELS = """
CREATE TEMPORARY TABLE {table} ON COMMIT DROP AS
WITH journeys AS MATERIALIZED ({journeys}),
levels AS MATERIALIZED ({levels})
SELECT date_trunc('hour', journey.started_at) AS hour, journey.app_id, journey.carrier, journey.country,
       journey.price_point, journey.flow, coalesce(levels.level, 0) AS level,
       coalesce(levels.excluded, false) AS excluded, levels.times
FROM journeys journey LEFT JOIN levels USING (jid)
"""

ROLLUP_CELLS = """
INSERT INTO funnel_funnelrollup
    (funnel_id, hour, app_id, carrier, country, price_point, flow, reached, excluded, computed_at)
SELECT %(funnel_id)s, {dimensions}, jsonb_build_array({reached}), count(*) FILTER (WHERE excluded), now()
FROM {table} GROUP BY {dimensions}
"""

ROLLUP_HOURS = """
WITH gap_counts AS (
    SELECT hour, gap.step, {gap} AS seconds, count(*) AS journeys
    FROM {table}, generate_series(2, {table}.level) AS gap (step)
    WHERE NOT excluded
    GROUP BY hour, gap.step, seconds
),
step_gaps AS (
    SELECT hour, step, jsonb_object_agg(seconds, journeys) AS histogram FROM gap_counts GROUP BY hour, step
),
gaps AS (
    SELECT hour, jsonb_object_agg(step, histogram) AS gaps FROM step_gaps GROUP BY hour
),
failed AS (
    SELECT date_trunc('hour', occurred_at) AS hour, error_code, count(*) AS charges
    FROM funnel_funnelevent
    WHERE step = 'charge_failed' AND error_code <> ''
      AND occurred_at >= %(since)s AND occurred_at < %(until)s{app_filter}
    GROUP BY 1, 2
),
failures AS (
    SELECT hour, jsonb_object_agg(error_code, charges) AS failures FROM failed GROUP BY hour
)
INSERT INTO funnel_funnelrolluphour (funnel_id, hour, gaps, failures, computed_at)
SELECT %(funnel_id)s, hours.hour, coalesce(gaps.gaps, '{{}}'::jsonb), coalesce(failures.failures, '{{}}'::jsonb), now()
FROM generate_series(%(since)s::timestamptz, %(until)s::timestamptz - interval '1 hour', interval '1 hour')
    AS hours (hour)
LEFT JOIN gaps USING (hour)
LEFT JOIN failures USING (hour)
"""


def rollup_statements(scope: FunnelScope, *, funnel_id: int) -> tuple[list[str], dict[str, Any]]:
    """Statements (to run in one transaction) that insert the rollups of the hours [since, until): the
    journeys that started then with their levels, in a temporary table; from it one row per hour and
    breakdown values (journeys per level reached, exclusions), and one per hour with a histogram of the
    whole seconds from each step to the next."""
    journeys, levels, params = journey_levels(scope)
    app_id, steps = scope.app_id, scope.steps
    reached = ", ".join(
        f"count(*) FILTER (WHERE NOT excluded AND level >= {level})" for level in range(1, len(steps) + 1)
    )
    statements = [
        f"DROP TABLE IF EXISTS {ROLLUP_JOURNEYS}",  # one left by an enclosing transaction
        ROLLUP_LEVELS.format(table=ROLLUP_JOURNEYS, journeys=journeys, levels=levels),
        ROLLUP_CELLS.format(table=ROLLUP_JOURNEYS, dimensions=DIMENSIONS, reached=reached),
        ROLLUP_HOURS.format(
            table=ROLLUP_JOURNEYS, gap=GAP, app_filter="\n      AND app_id = %(app_id)s" if app_id is not None else ""
        ),
        f"DROP TABLE {ROLLUP_JOURNEYS}",
    ]
    return statements, {**params, "funnel_id": funnel_id}


# The gap histograms of a period's hours, added up.
ROLLUP_GAPS = """
SELECT step.key::int, bucket.key::int, sum(bucket.value::bigint)::bigint
FROM funnel_funnelrolluphour hour, jsonb_each(hour.gaps) AS step, jsonb_each_text(step.value) AS bucket
WHERE hour.funnel_id = %(funnel_id)s AND hour.hour >= %(since)s AND hour.hour < %(until)s
GROUP BY 1, 2
"""


def set_analysis_limits(cursor: Any) -> None:
    """Inside a transaction: the memory and time a funnel statement may take (FUNNEL_WORK_MEM, *_TIMEOUT_MS),
    and a plan that does not hinge on statistics: its joins are of whole sets (the period's journeys to
    their events, to their levels), which a nested loop turns quadratic when statistics of freshly
    loaded events underestimate them; JIT compilation costs about a second and saves less."""
    cursor.execute("SET LOCAL work_mem = %s", [settings.FUNNEL_WORK_MEM])
    cursor.execute("SELECT set_config('statement_timeout', %s, true)", [str(settings.FUNNEL_STATEMENT_TIMEOUT_MS)])
    cursor.execute("SET LOCAL jit = off")
    cursor.execute("SET LOCAL enable_nestloop = off")
