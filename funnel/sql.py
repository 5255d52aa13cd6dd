"""windowFunnel in SQL, for PostgreSQL: the store aggregates, Python reads a few hundred rows.

A journey that started in the period is read with all its events from the period's start on (a chain
may begin at any of its step-1 events, however long after the journey's start). Events at the same
instant are taken in step order, as ClickHouse sorts them, so one instant can satisfy consecutive
steps.

ClickHouse's default mode keeps, level by level, the start of the latest chain that reached it; the
journey's level is the furthest any chain reaches, and of the chains that reach it the best is the one
that started last. The same, computed per chain: a chain starting at step-1 event time t1 takes as its
step 2 the first step-2 event at or after t1, as its step 3 the first step-3 event at or after that,
and so on (the earliest extension is the best one for a given start), as long as they are within the
window of t1. So, in one ordered read of the events (an index-only scan of the index on (app_id,
journey_id, occurred_at) that includes the step: no sort, no visit to the table):

* per journey, one sorted array of times per step (`array_agg` over events sorted by journey and time);
* per step-1 time t1 (`unnest`), each next step's time found by binary search in its array
  (`width_bucket(x, sorted array)` counts the elements <= x, in C);
* the chain's level: 1 + the steps found within the window; per journey, the chain with the highest
  level and, of those, the latest start (`DISTINCT ON`). A journey with the exclusion step in
  [start, start + window] is excluded (two more binary searches);
* the report's counts, per level and breakdown value and per step and time from the step before, in one
  hash aggregation (`GROUPING SETS`).

Where the time goes (1 M events, 6 steps, about 1.1 s of one core): reading and grouping the events into
arrays about half, the chains a quarter, the join to the journeys and the counts the rest; PostgreSQL
pays its executor's cost per row and per expression at each of these steps, where ClickHouse's
windowFunnel runs one compiled loop over columns (docs/funnel.md, "At volume").
"""

from collections.abc import Sequence
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
    # The journeys of part `part` of `parts` only (by a hash of their id), for a read cut into parts that run
    # at once (playpay.parallel): the parts' counts add up to the whole's.
    part: int = 0
    parts: int = 1


# The period's journeys, with what reports break down by.
JOURNEYS = """
SELECT app_id, journey_id, started_at, carrier, country, price_point, flow
FROM funnel_journey
WHERE started_at >= %(since)s AND started_at < %(until)s{app_filter}{part_filter}
"""

# Per journey with funnel events, the times of each step, sorted (the aggregates take the rows in the
# order the subquery sorts them). A journey's events are all at or after its start, so none before the
# period's start is needed. Those up to one window after the period are read whoever's they are (the
# journeys that started before the period are dropped later: cheaper than looking each event up);
# later ones only for the period's journeys (a chain may begin long after its journey did).
STEP_TIMES = """
SELECT app_id, journey_id, {arrays},
       array_agg(t) FILTER (WHERE step = %(exclusion)s) AS excluded_at
FROM (
    SELECT app_id, journey_id, occurred_at AS t, step::text AS step
    FROM funnel_funnelevent
    WHERE occurred_at >= %(since)s
      AND (step = ANY(%(steps)s::text[]) OR step = %(exclusion)s){app_filter}{part_filter}
      AND (occurred_at < %(horizon)s OR (app_id, journey_id) IN (SELECT app_id, journey_id FROM journeys))
    ORDER BY app_id, journey_id, occurred_at
) events
GROUP BY app_id, journey_id
"""

# The first element >= x of a sorted array of times (NULL when none): the elements < x are those <= x
# less a microsecond, the resolution of timestamptz.
NEXT = "a{step}[width_bucket(t{previous} - interval '1 microsecond', a{step}) + 1]"

# One row per step-1 event (a chain's start, t1), then one subquery per next step adding its time: a
# subquery kept apart (OFFSET 0) computes each search once, where one flattened expression would repeat
# the searches of steps 2 .. k-1 inside step k's (15 searches instead of 5 for six steps).
CHAIN_STARTS = "SELECT app_id, journey_id, {arrays}excluded_at, unnest(a1) AS t1 FROM ({step_times}) step_times"
CHAIN_STEP = "SELECT *, {next} AS t{step} FROM ({chains} OFFSET 0) chain_{step}"

LEVELS = """
SELECT DISTINCT ON (app_id, journey_id) app_id, journey_id, level,
       coalesce(width_bucket(t1 + %(window)s, excluded_at)
                > width_bucket(t1 - interval '1 microsecond', excluded_at), false) AS excluded,
       {times}
FROM (
    SELECT app_id, journey_id, excluded_at, t1, {within}{level} AS level
    FROM ({chains} OFFSET 0) chains
) chains
ORDER BY app_id, journey_id, level DESC, t1 DESC
"""


def _app_filter(scope: FunnelScope, column: str) -> str:
    return f"\n  AND {column} = %(app_id)s" if scope.app_id is not None else ""


def _part_filter(scope: FunnelScope) -> str:
    """The journeys of the scope's part: their id's hash (an int4, made non-negative) modulo the parts."""
    return "\n  AND (hashtext(journey_id)::bigint + 2147483648) %% %(parts)s = %(part)s" if scope.parts > 1 else ""


def journey_levels(scope: FunnelScope) -> tuple[str, str, dict[str, Any]]:
    """SQL of the period's journeys (for a `journeys` CTE), of one row per journey with a step-1 event
    (app_id, journey_id, level 1 to len(steps), excluded, t1 .. tN the times of the best chain's steps,
    NULL past its level) reading it, and their parameters; the second may hold journeys that started
    before the period (join it to the first)."""
    count = len(scope.steps)
    within = "t{step} <= t1 + %(window)s"
    step_times = STEP_TIMES.format(
        arrays=", ".join(
            f"array_agg(t) FILTER (WHERE step = %(step_{step})s) AS a{step}" for step in range(1, count + 1)
        ),
        app_filter=_app_filter(scope, "app_id"),
        part_filter=_part_filter(scope),
    )
    chains = CHAIN_STARTS.format(arrays="".join(f"a{step}, " for step in range(2, count + 1)), step_times=step_times)
    for step in range(2, count + 1):
        chains = CHAIN_STEP.format(next=NEXT.format(step=step, previous=step - 1), step=step, chains=chains)
    levels = LEVELS.format(
        times=", ".join(f"t{step}" for step in range(1, count + 1)),
        within="".join(
            f"CASE WHEN {within.format(step=step)} THEN t{step} END AS t{step}, " for step in range(2, count + 1)
        ),
        level=" + ".join(["1", *(f"({within.format(step=step)} IS TRUE)::int" for step in range(2, count + 1))]),
        chains=chains,
    )
    params = {
        "steps": list(scope.steps),
        **{f"step_{index}": step for index, step in enumerate(scope.steps, start=1)},
        # No event has an empty step: an empty exclusion matches nothing.
        "exclusion": scope.exclusion,
        "window": scope.window,
        "since": scope.since,
        "until": scope.until,
        "horizon": scope.until + scope.window,
        "app_id": scope.app_id,
        "part": scope.part,
        "parts": scope.parts,
    }
    journeys = JOURNEYS.format(app_filter=_app_filter(scope, "app_id"), part_filter=_part_filter(scope))
    return journeys, levels, params


# Whole seconds from one step's time to the next's (NULL past the level). date_part, a float8, is exact
# here: the microseconds of a day and the days' seconds, each far below 2^53.
GAP = "floor(date_part('epoch', {later} - {earlier}))::int"

# One pass of hash aggregation makes both kinds of rows: journeys per breakdown value, level and
# exclusion, and journeys per step and time from the step before (one grouping set per step).
REPORT = """
WITH journeys AS MATERIALIZED ({journeys})
SELECT CASE WHEN GROUPING(grp) = 0 THEN 'reached' ELSE 'gap' END, coalesce(grp, ''), coalesce(level, {gap_step}),
       coalesce(excluded::int, {gap_seconds}), count(*)
FROM (
    SELECT {group} AS grp, levels.level, levels.excluded, {gaps}
    FROM journeys journey JOIN ({levels}) levels USING (app_id, journey_id)
) reached
GROUP BY GROUPING SETS ((grp, level, excluded), {gap_sets})
HAVING GROUPING(grp) = 0 OR {gap_seconds} IS NOT NULL
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
    count = len(scope.steps)
    steps = range(2, max(count, 2) + 1)  # a one-step funnel has no gaps, but the statement one column
    query = REPORT.format(
        journeys=journeys,
        levels=levels,
        group=GROUPS[breakdown],
        gaps=", ".join(
            f"CASE WHEN NOT levels.excluded THEN {GAP.format(later=f'levels.t{step}', earlier=f'levels.t{step - 1}')} "
            f"END AS gap_{step}"
            if step <= count
            else f"NULL::int AS gap_{step}"
            for step in steps
        ),
        gap_sets=", ".join(f"(gap_{step})" for step in steps),
        gap_step="CASE " + " ".join(f"WHEN GROUPING(gap_{step}) = 0 THEN {step}" for step in steps) + " END",
        gap_seconds="coalesce(" + ", ".join(f"gap_{step}" for step in steps) + ")",
    )
    return query, params


DIMENSIONS = "hour, app_id, carrier, country, price_point, flow"
ROLLUP_JOURNEYS = "funnel_rollup_journeys"

ROLLUP_LEVELS = """
CREATE TEMPORARY TABLE {table} ON COMMIT DROP AS
WITH journeys AS MATERIALIZED ({journeys})
SELECT date_trunc('hour', journey.started_at) AS hour, journey.app_id, journey.carrier, journey.country,
       journey.price_point, journey.flow, coalesce(levels.level, 0) AS level,
       coalesce(levels.excluded, false) AS excluded, ARRAY[{times}] AS times
FROM journeys journey LEFT JOIN ({levels}) levels USING (app_id, journey_id)
"""

ROLLUP_CELLS = """
INSERT INTO funnel_funnelrollup
    (funnel_id, hour, app_id, carrier, country, price_point, flow, reached, excluded, computed_at)
SELECT %(funnel_id)s, {dimensions}, jsonb_build_array({reached}), count(*) FILTER (WHERE excluded), now()
FROM {table} GROUP BY {dimensions}
"""

ROLLUP_HOURS = """
WITH gap_seconds AS (
    SELECT hour, gap.step, {gap} AS seconds
    FROM {table}, generate_series(2, {table}.level) AS gap (step)
    WHERE NOT excluded
),
gap_counts AS (
    SELECT hour, step, width_bucket(seconds, %(gap_bounds)s::int[]) AS bucket, count(*) AS journeys,
           sum(seconds) AS seconds
    FROM gap_seconds
    GROUP BY hour, step, bucket
),
step_gaps AS (
    SELECT hour, step, jsonb_object_agg(bucket, jsonb_build_array(journeys, seconds)) AS histogram
    FROM gap_counts GROUP BY hour, step
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


def rollup_statements(
    scope: FunnelScope, *, funnel_id: int, gap_bounds: Sequence[int]
) -> tuple[list[str], dict[str, Any]]:
    """Statements (to run in one transaction) that insert the rollups of the hours [since, until): the
    journeys that started then with their levels, in a temporary table; from it one row per hour and
    breakdown values (journeys per level reached, exclusions), and one per hour with a histogram of the
    whole seconds from each step to the next, in the buckets `gap_bounds` (lower bounds) gives."""
    journeys, levels, params = journey_levels(scope)
    app_id, steps = scope.app_id, scope.steps
    reached = ", ".join(
        f"count(*) FILTER (WHERE NOT excluded AND level >= {level})" for level in range(1, len(steps) + 1)
    )
    statements = [
        f"DROP TABLE IF EXISTS {ROLLUP_JOURNEYS}",  # one left by an enclosing transaction
        ROLLUP_LEVELS.format(
            table=ROLLUP_JOURNEYS,
            journeys=journeys,
            levels=levels,
            times=", ".join(f"levels.t{step}" for step in range(1, len(steps) + 1)),
        ),
        ROLLUP_CELLS.format(table=ROLLUP_JOURNEYS, dimensions=DIMENSIONS, reached=reached),
        ROLLUP_HOURS.format(
            table=ROLLUP_JOURNEYS,
            gap=GAP.format(later="times[gap.step]", earlier="times[gap.step - 1]"),
            app_filter="\n      AND app_id = %(app_id)s" if app_id is not None else "",
        ),
        f"DROP TABLE {ROLLUP_JOURNEYS}",
    ]
    return statements, {**params, "funnel_id": funnel_id, "gap_bounds": list(gap_bounds)}


def prefer_ordered_reads(cursor: Any) -> None:
    """Inside a transaction: a raw report reads the period's events in journey order through the covering index
    (`funnel_event_journey_idx`: a Merge Append of index-only scans over the months), not by a bitmap or a scan
    followed by a sort. On its own estimates PostgreSQL sorts, and over months that sort does not fit in
    FUNNEL_WORK_MEM: at 10 M events it spilled 588 MB to disk, and the report took 47.6 s instead of 25.9 s.
    Over a day or a month the plan and its time stay the same (0.32 s and 7.2 s measured against 0.33 s and
    6.9 s). Sequential scans are put off too (or the planner sorts after one instead), for the whole statement:
    its other reads (the period's journeys) are by index already."""
    cursor.execute("SET LOCAL enable_bitmapscan = off")
    cursor.execute("SET LOCAL enable_seqscan = off")


def set_analysis_limits(cursor: Any, *, timeout_ms: int | None = None) -> None:
    """Inside a transaction: the memory and time a funnel statement may take (FUNNEL_WORK_MEM, `timeout_ms`
    or FUNNEL_STATEMENT_TIMEOUT_MS),
    and a plan that does not hinge on statistics: its joins are of whole sets (the period's journeys to
    their events, to their levels), which a nested loop turns quadratic when statistics of freshly
    loaded events underestimate them; JIT compilation costs about a second and saves less."""
    cursor.execute("SET LOCAL work_mem = %s", [settings.FUNNEL_WORK_MEM])
    timeout = settings.FUNNEL_STATEMENT_TIMEOUT_MS if timeout_ms is None else timeout_ms
    cursor.execute("SELECT set_config('statement_timeout', %s, true)", [str(timeout)])
    cursor.execute("SET LOCAL jit = off")
    cursor.execute("SET LOCAL enable_nestloop = off")
