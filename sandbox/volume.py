"""Volume data for benchmarks and timings: N realistic payments, and everything they leave behind, made
by PostgreSQL itself with set-based SQL (`generate_volume`).

Month by month (the oldest first, more recent months busier, with weekly and hourly seasonality), one
transaction draws the month's payments into a temporary table and inserts from it, as the services would
have left them: payments with their final status, status history, refunds, reversals, balanced ledger
entries and lines, journeys and funnel events (with their de-duplication keys), and, in the journal's own
database, the API calls, carrier calls and callbacks. No row goes through Python.

The ledger's amounts are computed by `payments.services.ledger` itself, once per price point, app and
kind of posting, into a small table the SQL joins; the balance trigger and every constraint stay on.

On empty tables (a database just migrated) the load sets their secondary indexes aside and builds them
again at the end, sorted builds instead of one insert per row into each index (`rebuild_indexes`).

Every INSERT lists its columns from the model's metadata: a field the generator does not set gets its
default (or NULL), and a new field without either stops the generator with its name, rather than
failing somewhere in the SQL.
"""

from __future__ import annotations

import calendar
import hashlib
import json
import math
import re
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, connections, models, transaction
from django.utils import timezone
from psycopg import sql
from psycopg.types.json import Jsonb

from carriers.adapters import adapter_class
from carriers.models import Carrier, PricePoint, Protocol
from funnel.models import FunnelEvent, FunnelEventKey, Journey
from funnel.services import PLATFORM_STEPS
from journal.models import JournalRecord
from payments.models import (
    LedgerEntry,
    LedgerLine,
    Payment,
    PaymentCarrierReference,
    PaymentIdempotencyKey,
    PaymentStatusChange,
    Refund,
    Reversal,
)
from payments.services import ledger
from payments.services.refunds import carrier_refunds
from playpay import partitions
from playpay.partitions import add_months, month_start
from tenants.models import App

JOURNAL = "journal"
APPS = 20
VOLUME_APP_PREFIX = "Volume Game"
# Each month is this much busier than the one before it.
MONTHLY_GROWTH = 1.12
WEEKDAY_WEIGHTS = [1.0, 0.95, 1.0, 1.05, 1.15, 1.35, 1.3]  # Monday first
HOUR_WEIGHTS = [  # UTC
    *[0.3, 0.2, 0.15, 0.12, 0.12, 0.18, 0.3, 0.5, 0.7, 0.8, 0.85, 0.9],
    *[0.95, 0.95, 0.95, 1.0, 1.05, 1.15, 1.3, 1.45, 1.5, 1.35, 1.0, 0.6],
]
# Shares of the outcomes of payments (older than a couple of hours; newer ones may be in flight); what is
# left above EXPIRED_UPTO stays charging with an outcome the carrier never told.
SUCCEEDED_SHARE = 0.86
FAILED_SHARE = 0.115
EXPIRED_UPTO = 0.998
PARTIAL_REFUND_SHARE, FULL_REFUND_SHARE, REVERSAL_SHARE = 0.010, 0.010, 0.003  # of succeeded payments
ONE_CLICK_SHARE = 0.6  # where the carrier offers it
FAILURE_CODES = [  # (code, weight)
    ("insufficient_funds", 0.40),
    ("spending_limit", 0.12),
    ("rejected", 0.15),
    ("invalid_pin", 0.10),
    ("carrier_timeout", 0.08),
    ("user_barred", 0.05),
    ("unknown_subscriber", 0.05),
    ("carrier_unavailable", 0.05),
]
PRICE_WEIGHTS = [0.55, 0.30, 0.15, 0.1, 0.05]  # the carrier's price points, cheapest first
PLAYERS_PER_PAYMENT = 0.2
# Funnel: about this share of the events come from journeys that reached a payment; the rest from
# journeys that stopped in the store (1 to 3 events each, DROP_EVENTS on average).
PAID_EVENT_SHARE = 0.6
GAME_STEPS = ["store_opened", "item_selected", "msisdn_entered"]
DROP_EVENTS = 1.8
# Protocols whose carriers tell the charge's outcome in a callback.
CALLBACK_PROTOCOLS = (Protocol.CAMARA, Protocol.AGGREGATOR)
WORK_MEM = "256MB"
# Building the indexes after a fast load: memory per build (sorts in memory up to it), builds at a time.
MAINTENANCE_WORK_MEM = "1GB"
BUILDERS = 2
# A month at 10 M payments is a million rows a statement: far beyond a request's statement timeout, but bounded.
STATEMENT_TIMEOUT = "1h"


class VolumeError(Exception):
    """The generator cannot run here (not PostgreSQL, no carriers...)."""


@dataclass
class VolumeResult:
    payments: int = 0
    refunds: int = 0
    reversals: int = 0
    ledger_entries: int = 0
    ledger_lines: int = 0
    history: int = 0
    journeys: int = 0
    events: int = 0
    journal_records: int = 0
    seconds: float = 0.0
    months: list[str] = field(default_factory=list)


# --- Column lists from the models -----------------------------------------------------------------


def insert_sql(model: type[models.Model], values: Mapping[str, str], source: str) -> str:
    """`INSERT INTO <table> (<columns>) SELECT <expressions> FROM <source>`, one expression per column of
    the model, by field attname from `values`; other fields get their default, or NULL when nullable."""
    columns, expressions = [], []
    unknown = set(values) - {f.attname for f in model._meta.concrete_fields}
    if unknown:
        raise VolumeError(f"{model._meta.db_table} has no fields {sorted(unknown)}")
    for model_field in model._meta.concrete_fields:
        if model_field.column is None:
            continue
        if model_field.attname in values:
            expression = values[model_field.attname]
        elif model_field.primary_key or model_field.null:
            continue  # the table's own sequence, or NULL
        elif model_field.has_default():
            expression = _literal(model_field.get_default())
        elif model_field.empty_strings_allowed and model_field.blank:
            expression = "''"
        else:
            raise VolumeError(
                f"{model._meta.db_table}.{model_field.column} has no value in the volume generator: add it to "
                "sandbox/volume.py"
            )
        columns.append(sql.Identifier(model_field.column).as_string())
        expressions.append(expression)
    table = sql.Identifier(model._meta.db_table).as_string()
    return f"INSERT INTO {table} ({', '.join(columns)}) SELECT {', '.join(expressions)} FROM {source}"


def _literal(value: Any) -> str:
    if isinstance(value, dict | list):
        return sql.Literal(Jsonb(value)).as_string()
    return sql.Literal(value).as_string()


def _sequence(model: type[models.Model]) -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_get_serial_sequence(%s, %s)", [model._meta.db_table, model._meta.pk.column])
        row = cursor.fetchone()
    if row is None or row[0] is None:
        raise VolumeError(f"{model._meta.db_table}.{model._meta.pk.column} has no sequence")
    return str(row[0])


# --- Reference data ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PriceChoice:
    price_point: PricePoint
    weight: float
    msisdn_prefix: str
    msisdn_digits: int
    one_click: bool
    refund_via_carrier: bool
    reversal_via_carrier: bool


def _apps() -> list[App]:
    apps = list(App.objects.filter(is_active=True).order_by("pk")[:APPS])
    for number in range(1, APPS - len(apps) + 1):
        app, _ = App.objects.get_or_create(name=f"{VOLUME_APP_PREFIX} {number:02d}")
        apps.append(app)
    return apps


def _price_choices() -> list[PriceChoice]:
    choices = []
    carriers = Carrier.objects.filter(is_active=True).select_related("country").order_by("slug")
    for index, carrier in enumerate(carriers):
        price_points = list(carrier.price_points.filter(is_active=True).order_by("amount_minor", "code"))
        prefix = carrier.number_prefixes.order_by("prefix").values_list("prefix", flat=True).first()
        if not prefix:
            prefix = f"{carrier.country.dialing_code or '1'}6"
        capabilities = adapter_class(carrier.protocol).capabilities
        carrier_weight = 1.0 + (index % 3) * 0.5
        for rank, price_point in enumerate(price_points):
            probe = Payment(carrier=carrier, price_point=price_point)
            choices.append(
                PriceChoice(
                    price_point=price_point,
                    weight=carrier_weight * PRICE_WEIGHTS[min(rank, len(PRICE_WEIGHTS) - 1)],
                    msisdn_prefix=prefix,
                    msisdn_digits=12 if prefix.startswith("44") else 11,
                    one_click=carrier.supports_one_click,
                    refund_via_carrier=carrier_refunds(probe),
                    reversal_via_carrier=carrier.supports_reversal and capabilities.reversal,
                )
            )
    if not choices:
        raise VolumeError("no active carrier with an active price point: run `manage.py seed_demo` first")
    return choices


def _ledger_rows(apps: list[App], choices: list[PriceChoice]) -> list[tuple[int, int, str, int, str, int]]:
    """(price point, app, scenario, order, account, amount): the lines `payments.services.ledger` posts for
    a charge, a full refund, half a refund, the rest of it, and a reversal."""
    rows = []
    for choice in choices:
        price_point = choice.price_point
        for app in apps:
            payment = Payment(
                app=app,
                carrier=price_point.carrier,
                price_point=price_point,
                amount_minor=price_point.amount_minor,
                currency=price_point.currency,
            )
            charge = ledger.charge_lines(payment)
            amount, half = price_point.amount_minor, price_point.amount_minor // 2

            undone = {  # scenario: (refunded before, after, through the carrier)
                "refund_full": (0, amount, choice.refund_via_carrier),
                "refund_half": (0, half, choice.refund_via_carrier),
                "refund_rest": (half, amount, choice.refund_via_carrier),
                "reversal": (0, amount, choice.reversal_via_carrier),
            }
            scenarios = {"charge": charge}
            for scenario, (before, after, via_carrier) in undone.items():
                scenarios[scenario] = ledger.undo_lines(
                    payment, charge=charge, before=before, after=after, via_carrier=via_carrier
                )
            for scenario, lines in scenarios.items():
                if sum(lines.values()) != 0:
                    raise VolumeError(f"unbalanced {scenario} lines for {price_point}: {lines}")
                for order, (account, line_amount) in enumerate(lines.items()):
                    if line_amount:  # as ledger._post: no zero lines
                        rows.append((price_point.pk, app.pk, scenario, order, account, line_amount))
    return rows


# Per final status (and variant: a refunded payment was refunded at once, 0, or in two halves, 1):
# (to status, time column of the chunk, actor, reason) from creation on.
_PIN_START = [
    ("created", "t0", "app", "payment created"),
    ("pin_sent", "t_pin_sent", "carrier", "PIN sent to the player"),
    ("pin_verified", "t_pin_verified", "carrier", "PIN accepted by the carrier"),
    ("charging", "t_charging", "system", "charging"),
]
_ONE_CLICK_START = [("created", "t0", "app", "payment created"), ("charging", "t_charging", "system", "one-click")]
_SUCCESS = ("succeeded", "t_done", "carrier", "charge confirmed by the carrier")


def _paths() -> list[tuple[str, str, int, int, str, str, str, str, str]]:
    """(status, flow, variant, order, from status, to status, time column, actor, reason) of every history."""
    paths: dict[tuple[str, str, int], list[tuple[str, str, str, str]]] = {}
    for flow, start in (("pin", _PIN_START), ("one_click", _ONE_CLICK_START)):
        succeeded = [*start, _SUCCESS]
        paths[("created", flow, 0)] = start[:1]
        paths[("charging", flow, 0)] = start
        paths[("succeeded", flow, 0)] = succeeded
        paths[("failed", flow, 0)] = [*start, ("failed", "t_done", "carrier", "")]  # reason: the failure code
        paths[("partially_refunded", flow, 0)] = [*succeeded, ("partially_refunded", "t_r1", "app", "refunded")]
        paths[("refunded", flow, 0)] = [*succeeded, ("refunded", "t_r1", "app", "refunded")]
        paths[("refunded", flow, 1)] = [
            *succeeded,
            ("partially_refunded", "t_r1", "app", "refunded"),
            ("refunded", "t_r2", "app", "refunded"),
        ]
        paths[("reversed", flow, 0)] = [*succeeded, ("reversed", "t_r1", "app", "reversed")]
    paths[("pin_sent", "pin", 0)] = _PIN_START[:2]
    paths[("expired", "pin", 0)] = [*_PIN_START[:2], ("expired", "t_done", "system", "PIN not confirmed in time")]
    rows = []
    for (status, flow, variant), steps in paths.items():
        previous = ""
        for order, (to_status, at, actor, reason) in enumerate(steps):
            rows.append((status, flow, variant, order, previous, to_status, at, actor, reason))
            previous = to_status
    return rows


def _cumulative(weights: Iterable[float]) -> list[float]:
    """Inner bounds for width_bucket(random(), bounds): bucket i + 1 is drawn with weight i's share."""
    values = list(weights)
    total, running, bounds = sum(values), 0.0, []
    for value in values[:-1]:
        running += value
        bounds.append(running / total)
    return bounds


def _hmac_pads() -> tuple[bytes, bytes]:
    """HMAC-SHA256's inner and outer padded keys of the journal's MSISDN hash (playpay.redaction), so
    that PostgreSQL computes the same hashes with sha256()."""
    key = (settings.JOURNAL_HASH_KEY or settings.SECRET_KEY).encode()
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    key = key.ljust(64, b"\0")
    return bytes(b ^ 0x36 for b in key), bytes(b ^ 0x5C for b in key)


# --- The plan: payments per month, days and hours ---------------------------------------------------


@dataclass(frozen=True)
class Month:
    start: date
    payments: int
    day_starts: list[datetime]
    day_bounds: list[float]

    @property
    def label(self) -> str:
        return f"{self.start:%Y-%m}"


def plan_months(*, payments: int, months: int, now: datetime) -> list[Month]:
    first = add_months(month_start(now), -(months - 1))
    shapes = []
    for index in range(months):
        start = add_months(first, index)
        days = calendar.monthrange(start.year, start.month)[1]
        day_starts, day_weights = [], []
        for day in range(days):
            moment = datetime(start.year, start.month, 1, tzinfo=UTC) + timedelta(days=day)
            if moment >= now:
                break
            elapsed = min((now - moment).total_seconds() / 86400, 1.0)
            day_starts.append(moment)
            day_weights.append(WEEKDAY_WEIGHTS[moment.weekday()] * elapsed)
        shapes.append((start, day_starts, day_weights, MONTHLY_GROWTH**index * sum(day_weights) / days))
    total_weight = sum(weight for *_, weight in shapes)
    plan, given = [], 0
    for index, (start, day_starts, day_weights, weight) in enumerate(shapes):
        count = payments - given if index == months - 1 else round(payments * weight / total_weight)
        given += count
        plan.append(Month(start, count, day_starts, _cumulative(day_weights) if len(day_weights) > 1 else []))
    return plan


# --- SQL ------------------------------------------------------------------------------------------

REFERENCE_TABLES = """
DROP TABLE IF EXISTS volume_price, volume_app, volume_lines, volume_path;
CREATE TEMP TABLE volume_price (
    n int PRIMARY KEY, price_point_id bigint, carrier_id bigint, carrier_slug text, protocol text, country text,
    code text, amount bigint, currency text, msisdn_prefix text, msisdn_digits int, one_click boolean,
    refund_via_carrier boolean, reversal_via_carrier boolean);
CREATE TEMP TABLE volume_app (n int PRIMARY KEY, app_id bigint, name text);
CREATE TEMP TABLE volume_lines (
    price_point_id bigint, app_id bigint, scenario text, n int, account text, amount bigint);
CREATE TEMP TABLE volume_path (
    status text, flow text, variant int, n int, from_status text, to_status text, at text, actor text,
    reason text, step text);
"""


def uuid7_sql(moment: str) -> str:
    """A UUIDv7 (RFC 9562) of the time `moment` (SQL), as `playpay.ids.new_public_id` makes them at that time:
    the milliseconds since 1970 in the first 48 bits, the version 7, the rest random."""
    return (
        "encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid()) placing "
        f"substring(int8send(floor(extract(epoch FROM {moment}) * 1000)::bigint) FROM 3) FROM 1 FOR 6), "
        "52, 1), 53, 1), 'hex')::uuid"
    )


# One row per payment of the month, with every draw the other tables derive from.
CHUNK_SQL = """
CREATE TEMP TABLE volume_chunk ON COMMIT DROP AS
SELECT *,
       CASE WHEN r_journey < %(journey_share)s THEN 'vj' || %(run)s || '-' || id ELSE '' END AS journey_id,
       CASE WHEN status = 'created' THEN '' ELSE 'r' || left(replace(public_id::text, '-', ''), 20) END
           AS carrier_reference
FROM (
SELECT nextval(%(payment_seq)s) AS id, {uuid7_t0} AS public_id, *,
       CASE status
           WHEN 'created' THEN t0 WHEN 'pin_sent' THEN t_pin_sent WHEN 'charging' THEN t_charging
           WHEN 'partially_refunded' THEN t_r1 WHEN 'reversed' THEN t_r1
           WHEN 'refunded' THEN CASE WHEN variant = 1 THEN t_r2 ELSE t_r1 END
           ELSE t_done END AS updated_at
FROM (
    SELECT *,
           t_r1 + LEAST(%(now)s - t_r1, interval '14 days') * r_ref2 AS t_r2
    FROM (
        SELECT *,
               t_done + LEAST(%(now)s - t_done,
                              CASE WHEN status = 'reversed' THEN interval '12 hours' ELSE interval '30 days' END)
                        * r_ref1 * 0.5 AS t_r1
        FROM (
            SELECT *,
                   CASE WHEN status = 'expired' THEN t0 + interval '10 minutes'
                        ELSE t_charging + make_interval(secs => 1 + r_latency * 4) END AS t_done
            FROM (
                SELECT *,
                       CASE WHEN flow = 'pin' THEN t_pin_verified + interval '0.4 seconds'
                            ELSE t0 + interval '0.4 seconds' END AS t_charging,
                       CASE WHEN status = 'refunded' AND r_ref2 < 0.5 THEN 1 ELSE 0 END AS variant,
                       CASE WHEN status = 'failed'
                            THEN (%(failure_codes)s::text[])[1 + width_bucket(r_failure, %(failure_bounds)s::float8[])]
                            ELSE '' END AS failure_code
                FROM (
                    SELECT *,
                           CASE
                               WHEN in_flight AND flow = 'pin' THEN (ARRAY['created', 'pin_sent', 'charging'])
                                   [1 + floor(r_failure * 3)::int]
                               WHEN in_flight THEN (ARRAY['created', 'charging'])[1 + floor(r_failure * 2)::int]
                               WHEN r_status < %(succeeded)s THEN CASE
                                   WHEN r_refund < %(partial)s THEN 'partially_refunded'
                                   WHEN r_refund < %(full)s THEN 'refunded'
                                   WHEN r_refund < %(reversal)s THEN 'reversed'
                                   ELSE 'succeeded' END
                               WHEN r_status < %(failed)s THEN 'failed'
                               WHEN r_status < %(expired)s THEN CASE WHEN flow = 'pin' THEN 'expired' ELSE 'failed' END
                               ELSE 'charging' END AS status,
                           t0 + interval '2 seconds' AS t_pin_sent,
                           t0 + make_interval(secs => 20 + r_latency * 70) AS t_pin_verified
                    FROM (
                        SELECT *,
                               CASE WHEN r_flow < %(one_click)s AND one_click THEN 'one_click' ELSE 'pin' END AS flow,
                               t0 > %(now)s - interval '2 hours' AND r_status > 0.9 AS in_flight
                        FROM (
                            SELECT d.*, a.app_id, a.name AS app_name, p.*,
                                   'player-' || floor(r_player * %(players)s)::bigint AS user_ref,
                                   '+' || p.msisdn_prefix || lpad((mod(floor(r_player * %(players)s)::bigint * 7919,
                                       power(10, p.msisdn_digits - length(p.msisdn_prefix))::bigint) + 20)::text,
                                       p.msisdn_digits - length(p.msisdn_prefix), '0') AS msisdn,
                                   CASE WHEN ts > %(now)s - interval '15 minutes' THEN ts - interval '1 day'
                                        ELSE ts END AS t0
                            FROM (
                                SELECT g, random() AS r_status, random() AS r_refund, random() AS r_flow,
                                       random() AS r_failure, random() AS r_latency, random() AS r_ref1,
                                       random() AS r_ref2, random() AS r_journey, random() AS r_player,
                                       (%(day_starts)s::timestamptz[])
                                           [1 + width_bucket(random(), %(day_bounds)s::float8[])]
                                       + make_interval(hours => width_bucket(random(), %(hour_bounds)s::float8[]),
                                                       secs => random() * 3600) AS ts,
                                       1 + width_bucket(random(), %(app_bounds)s::float8[]) AS app_n,
                                       1 + width_bucket(random(), %(price_bounds)s::float8[]) AS price_n
                                FROM generate_series(1, %(count)s) AS g
                            ) d
                            JOIN volume_app a ON a.n = d.app_n
                            JOIN volume_price p ON p.n = d.price_n
                        ) placed
                    ) flows
                ) statuses
            ) started
        ) done
    ) refunded
) chunk
) numbered
""".replace("{uuid7_t0}", uuid7_sql("t0"))


PAYMENT_VALUES = {
    "id": "id",
    "public_id": "public_id",
    "app_id": "app_id",
    "user_ref": "user_ref",
    "msisdn": "msisdn",
    "carrier_id": "carrier_id",
    "price_point_id": "price_point_id",
    "amount_minor": "amount",
    "currency": "currency",
    "refunded_minor": ("CASE status WHEN 'refunded' THEN amount WHEN 'partially_refunded' THEN amount / 2 ELSE 0 END"),
    "status": "status",
    "flow": "flow",
    "idempotency_key": "'k' || %(run)s || '-' || id",
    "journey_id": "journey_id",
    "metadata": "'{}'::jsonb",
    "carrier_reference": "carrier_reference",
    "failure_code": "failure_code",
    "failure_message": "CASE WHEN failure_code = '' THEN '' ELSE initcap(replace(failure_code, '_', ' ')) END",
    "pin_attempts": "CASE WHEN flow = 'pin' AND status NOT IN ('created', 'pin_sent', 'expired') THEN 1 ELSE 0 END",
    "pin_expires_at": "CASE WHEN flow = 'pin' AND status <> 'created' THEN t0 + interval '10 minutes' END",
    "carrier_data": "'{}'::jsonb",
    "charge_attempts": "CASE WHEN status IN ('created', 'pin_sent', 'expired') THEN 0 ELSE 1 END",
    "created_at": "t0",
    "updated_at": "updated_at",
    # A charge whose outcome the carrier has not told: the resolver asks again.
    "outcome_unknown_since": "CASE WHEN status = 'charging' THEN t_charging END",
    "resolve_attempts": "CASE WHEN status = 'charging' AND t0 < %(now)s - interval '1 hour' THEN 5 ELSE 0 END",
    "next_resolve_at": "CASE WHEN status = 'charging' THEN %(now)s + interval '5 minutes' END",
}

# The payments' keys unique across months (payments.services.payment_keys), claimed as the services do.
IDEMPOTENCY_KEY_VALUES = {
    "app_id": "app_id",
    "key": PAYMENT_VALUES["idempotency_key"],
    "payment_id": "id",
    "payment_created_at": "t0",
}
CARRIER_REFERENCE_VALUES = {
    "carrier_id": "carrier_id",
    "reference": "carrier_reference",
    "payment_id": "id",
    "payment_created_at": "t0",
}
# A reference is 28 random bits within its millisecond: one drawn twice stays with the first payment, and the
# other payment is left without it, as the services do (payments.services.payment_keys).
CARRIER_REFERENCE_SOURCE = "volume_chunk WHERE carrier_reference <> '' ORDER BY id ON CONFLICT DO NOTHING"
REFERENCES_DRAWN_SQL = "SELECT count(*) FROM volume_chunk WHERE carrier_reference <> ''"
REFERENCES_TAKEN_SQL = f"""
UPDATE {Payment._meta.db_table} p SET carrier_reference = ''
FROM volume_chunk c
JOIN {PaymentCarrierReference._meta.db_table} r ON r.carrier_id = c.carrier_id AND r.reference = c.carrier_reference
WHERE c.carrier_reference <> '' AND r.payment_id <> c.id AND p.id = c.id AND p.created_at = c.t0
"""

HISTORY_SOURCE = """(
    SELECT c.id, c.t0 AS payment_created_at, p.from_status, p.to_status,
           CASE p.actor WHEN 'app' THEN 'app:' || c.app_name WHEN 'carrier' THEN 'carrier:' || c.carrier_slug
                ELSE 'system' END AS actor,
           CASE WHEN p.to_status = 'failed' THEN c.failure_code ELSE p.reason END AS reason,
           CASE p.at WHEN 't0' THEN c.t0 WHEN 't_pin_sent' THEN c.t_pin_sent
                WHEN 't_pin_verified' THEN c.t_pin_verified WHEN 't_charging' THEN c.t_charging
                WHEN 't_done' THEN c.t_done WHEN 't_r1' THEN c.t_r1 ELSE c.t_r2 END AS at
    FROM volume_chunk c JOIN volume_path p USING (status, flow, variant)
    ORDER BY c.id, p.n
) history"""

HISTORY_VALUES = {
    "payment_id": "id",
    "payment_created_at": "payment_created_at",
    "from_status": "from_status",
    "to_status": "to_status",
    "actor": "actor",
    "reason": "reason",
    "created_at": "at",
}

REFUNDS_SQL = """
CREATE TEMP TABLE volume_refund ON COMMIT DROP AS
SELECT nextval(%(refund_seq)s) AS id, {uuid7_at} AS public_id, c.id AS payment_id,
       c.t0 AS payment_created_at,
       c.public_id AS payment_public_id, c.app_id, c.app_name, c.price_point_id, c.carrier_slug, c.currency,
       c.refund_via_carrier AS via_carrier, r.scenario, r.amount, r.at
FROM volume_chunk c
CROSS JOIN LATERAL (VALUES
    ('refund_half', c.amount / 2, c.t_r1, c.status = 'partially_refunded' OR (c.status = 'refunded' AND c.variant = 1)),
    ('refund_rest', c.amount - c.amount / 2, c.t_r2, c.status = 'refunded' AND c.variant = 1),
    ('refund_full', c.amount, c.t_r1, c.status = 'refunded' AND c.variant = 0)
) AS r (scenario, amount, at, wanted)
WHERE c.status IN ('partially_refunded', 'refunded') AND r.wanted
ORDER BY c.id, r.at
""".replace("{uuid7_at}", uuid7_sql("r.at"))

MONEY_OPERATION_VALUES = {
    "status": "'succeeded'",
    "requested_by": "'app:' || app_name",
    "via_carrier": "via_carrier",
    "failure_code": "''",
    "failure_message": "''",
    "carrier_requested_at": "CASE WHEN via_carrier THEN at END",
    "created_at": "at",
    "completed_at": "at + interval '2 seconds'",
    "resolve_attempts": "0",
}

REFUND_VALUES = {
    **MONEY_OPERATION_VALUES,
    "id": "id",
    "public_id": "public_id",
    "payment_id": "payment_id",
    "amount_minor": "amount",
    "payment_created_at": "payment_created_at",
    "currency": "currency",
    "reason": "'requested by the player'",
    "carrier_reference": "CASE WHEN via_carrier THEN 'rf' || left(replace(public_id::text, '-', ''), 20) ELSE '' END",
}

REVERSAL_SOURCE = """(
    SELECT id AS payment_id, t0 AS payment_created_at, app_name, reversal_via_carrier AS via_carrier, t_r1 AS at
    FROM volume_chunk WHERE status = 'reversed'
) reversals"""

REVERSAL_VALUES = {
    **MONEY_OPERATION_VALUES,
    "payment_id": "payment_id",
    "payment_created_at": "payment_created_at",
    "reason": "'item not delivered'",
}

ENTRIES_SQL = """
CREATE TEMP TABLE volume_entry ON COMMIT DROP AS
SELECT nextval(%(entry_seq)s) AS id, *
FROM (
    SELECT 'charge' AS kind, id AS payment_id, NULL::bigint AS refund_id, 'charge' AS memo, t_done AS at,
           price_point_id, app_id, currency, 'charge' AS scenario, t0 AS payment_created_at
    FROM volume_chunk WHERE status IN ('succeeded', 'partially_refunded', 'refunded', 'reversed')
    UNION ALL
    SELECT 'refund', payment_id, id, 'refund: requested by the player', at, price_point_id, app_id, currency, scenario,
           payment_created_at
    FROM volume_refund
    UNION ALL
    SELECT 'reversal', id, NULL, 'reversal: item not delivered', t_r1, price_point_id, app_id, currency, 'reversal',
           t0
    FROM volume_chunk WHERE status = 'reversed'
    ORDER BY at
) entries
"""

ENTRY_VALUES = {
    "id": "id",
    "kind": "kind",
    "payment_id": "payment_id",
    "refund_id": "refund_id",
    "payment_created_at": "payment_created_at",
    "memo": "memo",
    "created_at": "at",
}

LINES_SOURCE = """(
    SELECT e.id AS entry_id, e.payment_created_at, l.account, l.amount, e.currency
    FROM volume_entry e
    JOIN volume_lines l ON l.price_point_id = e.price_point_id AND l.app_id = e.app_id AND l.scenario = e.scenario
    ORDER BY e.id, l.n
) lines"""

# What the ledger's balance trigger checks, for a whole month at once when the triggers are skipped: the
# lines just inserted (ids from the first one drawn for the month on; the primary key finds them, also while
# the secondary indexes are set aside for a fast load).
UNBALANCED_SQL = """
SELECT l.entry_id, l.currency, sum(l.amount_minor)
FROM payments_ledgerline l
WHERE l.id > %(first_line)s
GROUP BY l.entry_id, l.currency HAVING sum(l.amount_minor) <> 0
LIMIT 5
"""

LINE_VALUES = {
    "entry_id": "entry_id",
    "payment_created_at": "payment_created_at",
    "account": "account",
    "amount_minor": "amount",
    "currency": "currency",
}

# Journeys that reached a payment (the store's three steps, then the platform's per status change),
# and journeys that stopped in the store (one to three steps, no carrier known yet).
EVENTS_SQL = """
CREATE TEMP TABLE volume_event ON COMMIT DROP AS
SELECT c.app_id, c.journey_id, c.journey_id || ':' || s.step AS event_id, s.step,
       c.t0 - make_interval(secs => s.before_s + c.r_latency * 30) AS occurred_at, 'game' AS source,
       '' AS error_code, '{}'::jsonb AS properties
FROM volume_chunk c
CROSS JOIN (VALUES ('store_opened', 150), ('item_selected', 90), ('msisdn_entered', 30)) AS s (step, before_s)
WHERE c.journey_id <> ''
UNION ALL
SELECT c.app_id, c.journey_id, 'platform:' || c.public_id || ':' || p.to_status, p.step,
       CASE p.at WHEN 't0' THEN c.t0 WHEN 't_pin_sent' THEN c.t_pin_sent
            WHEN 't_pin_verified' THEN c.t_pin_verified WHEN 't_charging' THEN c.t_charging
            WHEN 't_done' THEN c.t_done WHEN 't_r1' THEN c.t_r1 ELSE c.t_r2 END,
       'platform', CASE WHEN p.to_status = 'failed' THEN c.failure_code ELSE '' END,
       jsonb_build_object('payment_id', c.public_id::text)
FROM volume_chunk c JOIN volume_path p USING (status, flow, variant)
WHERE c.journey_id <> '' AND p.step <> ''
UNION ALL
SELECT d.app_id, d.journey_id, d.journey_id || ':' || s.step, s.step,
       d.started + make_interval(secs => s.n * 40 + d.r_gap * 30), 'game', '', '{}'::jsonb
FROM (
    SELECT a.app_id, 'vd' || %(run)s || '-' || %(month)s || '-' || g AS journey_id, ts AS started,
           1 + width_bucket(r_depth, ARRAY[0.45, 0.8]::float8[]) AS depth, r_gap
    FROM (
        SELECT g, random() AS r_depth, random() AS r_gap,
               (%(day_starts)s::timestamptz[])[1 + width_bucket(random(), %(day_bounds)s::float8[])]
               + make_interval(hours => width_bucket(random(), %(hour_bounds)s::float8[]),
                               secs => random() * 3000) AS ts,
               1 + width_bucket(random(), %(app_bounds)s::float8[]) AS app_n
        FROM generate_series(1, %(drops)s) AS g
    ) r JOIN volume_app a ON a.n = r.app_n
    WHERE ts < %(now)s - interval '15 minutes'
) d
CROSS JOIN (VALUES (0, 'store_opened'), (1, 'item_selected'), (2, 'msisdn_entered')) AS s (n, step)
WHERE s.n < d.depth
"""

PAID_EVENTS_SQL = f"""
SELECT count(*) * {len(GAME_STEPS)} + (
    SELECT count(*) FROM volume_chunk c JOIN volume_path p USING (status, flow, variant)
    WHERE c.journey_id <> '' AND p.step <> '')
FROM volume_chunk WHERE journey_id <> ''
"""

EVENT_VALUES = {
    "app_id": "app_id",
    "journey_id": "journey_id",
    "event_id": "event_id",
    "step": "step",
    "occurred_at": "occurred_at",
    "received_at": "occurred_at + interval '1 second'",
    "source": "source",
    "error_code": "error_code",
    "properties": "properties",
}

JOURNEY_SOURCE = """(
    SELECT e.app_id, e.journey_id, min(e.occurred_at) AS started_at,
           coalesce(c.user_ref, '') AS user_ref, coalesce(c.carrier_slug, '') AS carrier,
           coalesce(c.country, '') AS country, coalesce(c.code, '') AS price_point, coalesce(c.flow, '') AS flow,
           CASE WHEN c.status IN ('succeeded', 'partially_refunded', 'refunded', 'reversed') THEN 'succeeded'
                WHEN c.status IN ('failed', 'expired') THEN c.status ELSE '' END AS outcome,
           max(e.occurred_at) AS updated_at
    FROM volume_event e LEFT JOIN volume_chunk c ON c.journey_id = e.journey_id AND c.app_id = e.app_id
    GROUP BY e.app_id, e.journey_id, c.user_ref, c.carrier_slug, c.country, c.code, c.flow, c.status
) journeys"""

JOURNEY_VALUES = {
    "app_id": "app_id",
    "journey_id": "journey_id",
    "user_ref": "user_ref",
    "started_at": "started_at",
    "carrier": "carrier",
    "country": "country",
    "price_point": "price_point",
    "flow": "flow",
    "outcome": "outcome",
    "updated_at": "updated_at",
}

# --- Journal (its own database) ---

# The rows the month's interactions are made of, copied into the journal's database (unlogged staging
# tables, named per run and month, dropped once the records are written).
JOURNAL_STAGING = """
CREATE UNLOGGED TABLE {payments} (
    public_id text, app_name text, user_ref text, msisdn text, carrier_slug text, protocol text, code text,
    amount bigint, currency text, flow text, status text, failure_code text, journey_id text,
    carrier_reference text, idempotency_key text, t0 timestamptz, t_pin_verified timestamptz,
    t_charging timestamptz, t_done timestamptz, latency real);
CREATE UNLOGGED TABLE {refunds} (
    public_id text, payment_public_id text, app_name text, carrier_slug text, via_carrier boolean,
    amount bigint, currency text, at timestamptz);
"""

JOURNAL_PAYMENTS_OUT = """
COPY (SELECT public_id, app_name, user_ref, msisdn, carrier_slug, protocol, code, amount, currency, flow, status,
             failure_code, journey_id, carrier_reference, 'k' || %(run)s || '-' || id, t0, t_pin_verified,
             t_charging, t_done, r_latency FROM volume_chunk) TO STDOUT
"""
JOURNAL_REFUNDS_OUT = """
COPY (SELECT public_id, payment_public_id, app_name, carrier_slug, via_carrier, amount, currency, at
      FROM volume_refund) TO STDOUT
"""

# (occurred_at, kind, payment, refund, journey, app, user, carrier, carrier reference, msisdn, data)
JOURNAL_SOURCE = """(
    SELECT t0 AS occurred_at, 'api_request' AS kind, public_id AS payment_id, '' AS refund_id, journey_id,
           app_name AS app, user_ref, '' AS carrier, '' AS carrier_reference, msisdn,
           jsonb_build_object(
               'method', 'POST', 'endpoint', '/api/v1/payments/', 'status', 201, 'latency_ms', 40 + latency * 60,
               'idempotency_key', idempotency_key,
               'request', jsonb_build_object('user_ref', user_ref, 'msisdn', left(msisdn, 6) || '*****'
                   || right(msisdn, 2), 'price_point', code, 'flow', flow, 'journey_id', journey_id),
               'response', jsonb_build_object('id', public_id, 'status', 'created', 'amount_minor', amount,
                   'currency', currency)) AS data
    FROM {payments}
    UNION ALL
    SELECT t0 + interval '0.3 seconds', 'carrier_call', public_id, '', '', '', '', carrier_slug, carrier_reference,
           msisdn,
           jsonb_build_object(
               'operation', CASE WHEN flow = 'pin' THEN 'start_pin' ELSE 'charge' END, 'protocol', protocol,
               'latency_ms', round(80 + latency * 900),
               'request', jsonb_build_object('payment_id', public_id, 'amount_minor', amount, 'currency', currency),
               'result', jsonb_build_object(
                   'outcome', CASE WHEN flow = 'pin' THEN 'pin_sent'
                                   WHEN status = 'failed' THEN 'failed' ELSE 'succeeded' END,
                   'carrier_reference', carrier_reference,
                   'error_code', CASE WHEN flow = 'one_click' THEN failure_code ELSE '' END))
    FROM {payments} WHERE status <> 'created'
    UNION ALL
    SELECT t_pin_verified, 'api_request', public_id, '', journey_id, app_name, user_ref, '', '', '',
           jsonb_build_object(
               'method', 'POST', 'endpoint', '/api/v1/payments/' || public_id || '/confirm/', 'status', 202,
               'latency_ms', 30 + latency * 40, 'request', jsonb_build_object('pin', '[redacted]'),
               'response', jsonb_build_object('id', public_id, 'status', 'pin_verified'))
    FROM {payments}
    WHERE flow = 'pin' AND status NOT IN ('created', 'pin_sent', 'expired')
    UNION ALL
    SELECT t_charging, 'carrier_call', public_id, '', '', '', '', carrier_slug, carrier_reference, msisdn,
           jsonb_build_object(
               'operation', 'confirm_pin', 'protocol', protocol, 'latency_ms', round(80 + latency * 900),
               'request', jsonb_build_object('payment_id', public_id, 'carrier_reference', carrier_reference),
               'result', jsonb_build_object(
                   'outcome', CASE WHEN status = 'failed' THEN 'failed'
                                   WHEN status = 'charging' THEN 'pending' ELSE 'succeeded' END,
                   'carrier_reference', carrier_reference, 'error_code', failure_code))
    FROM {payments}
    WHERE flow = 'pin' AND status NOT IN ('created', 'pin_sent', 'expired')
    UNION ALL
    SELECT t_done, 'carrier_callback', public_id, '', '', '', '', carrier_slug, carrier_reference, '',
           jsonb_build_object(
               'method', 'POST', 'endpoint', '/api/v1/carriers/' || carrier_slug || '/notifications/',
               'status', 200, 'latency_ms', 5 + latency * 20,
               'request', jsonb_build_object('reference', carrier_reference,
                   'result', CASE WHEN status = 'failed' THEN 'failed' ELSE 'succeeded' END))
    FROM {payments}
    WHERE protocol = ANY(%(callback_protocols)s) AND status NOT IN ('created', 'pin_sent', 'charging', 'expired')
    UNION ALL
    SELECT at, 'api_request', payment_public_id, public_id, '', app_name, '', '', '', '',
           jsonb_build_object(
               'method', 'POST', 'endpoint', '/api/v1/payments/' || payment_public_id || '/refunds/',
               'status', 201, 'latency_ms', 45,
               'request', jsonb_build_object('amount_minor', amount, 'reason', 'requested by the player'),
               'response', jsonb_build_object('id', public_id, 'status', 'pending', 'amount_minor', amount,
                   'currency', currency))
    FROM {refunds}
    UNION ALL
    SELECT at + interval '1 second', 'carrier_call', payment_public_id, public_id, '', '', '', carrier_slug, '', '',
           jsonb_build_object(
               'operation', 'refund', 'latency_ms', 150,
               'request', jsonb_build_object('payment_id', payment_public_id, 'refund_id', public_id,
                   'amount_minor', amount, 'currency', currency),
               'result', jsonb_build_object('outcome', 'succeeded'))
    FROM {refunds} WHERE via_carrier
) interactions"""

JOURNAL_VALUES = {
    "occurred_at": "occurred_at",
    "kind": "kind",
    "payment_id": "payment_id",
    "refund_id": "refund_id",
    "journey_id": "journey_id",
    "request_id": "CASE WHEN kind = 'carrier_call' THEN '' ELSE replace(gen_random_uuid()::text, '-', '') END",
    "app": "app",
    "user_ref": "user_ref",
    "carrier": "carrier",
    "carrier_reference": "carrier_reference",
    "msisdn_hash": "msisdn_hash",
    "document": """jsonb_build_object(
        'occurred_at', to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'),
        'kind', kind,
        'correlation', jsonb_strip_nulls(jsonb_build_object(
            'payment_id', nullif(payment_id, ''), 'refund_id', nullif(refund_id, ''),
            'journey_id', nullif(journey_id, ''), 'app', nullif(app, ''), 'user_ref', nullif(user_ref, ''),
            'carrier', nullif(carrier, ''), 'carrier_reference', nullif(carrier_reference, ''),
            'msisdn_hash', nullif(msisdn_hash, ''))),
        'data', data)""",
}

# Only the records a deployment still holds under its retention (JOURNAL_TTL_DAYS), as if the daily expiry
# job had run: what a database of that age really keeps.
JOURNAL_WITHIN_TTL = """(
    SELECT * FROM {source}
    WHERE occurred_at >= %(now)s - interval '1 day'
        * coalesce((%(journal_ttl_days)s::jsonb ->> kind)::int, %(journal_ttl_default_days)s)
) kept"""

JOURNAL_HASHED = """(
    SELECT *, CASE WHEN msisdn = '' THEN ''
                   ELSE encode(sha256(%(outer_pad)s || sha256(%(inner_pad)s || convert_to(msisdn, 'UTF8'))), 'hex')
              END AS msisdn_hash
    FROM {source}
) hashed"""


# --- Running it -----------------------------------------------------------------------------------


def check_databases() -> None:
    if connection.vendor != "postgresql":
        raise VolumeError(
            "generate_volume needs PostgreSQL (DATABASE_URL=postgres://...): it is made of PostgreSQL's set-based "
            "SQL, and volumes like these are what SQLite is not for"
        )
    if settings.JOURNAL_BACKEND != "sql" or connections[JOURNAL].vendor != "postgresql":
        raise VolumeError("generate_volume writes the journal into PostgreSQL: set JOURNAL_URL=postgres://...")


def generate_volume(
    *,
    payments: int,
    events: int | None = None,
    months: int = 18,
    seed: float | None = None,
    now: datetime | None = None,
    fire_triggers: bool | None = None,
    rebuild_indexes: bool | None = None,
    journal_within_ttl: bool = False,
    progress: Callable[[str], None] = lambda message: None,
) -> VolumeResult:
    """Add `payments` payments over the last `months` months, and about `events` funnel events (2 per payment
    unless told), with all that goes with them; see the module's docstring. Runs again add more.

    `fire_triggers`: the database's row triggers (the ledger's balance check, foreign-key checks) fire for
    every row, which costs about half the time. By default (None) a superuser skips them
    (session_replication_role = replica, for the generator's transactions only) and the generator checks
    what they would: every entry balances (the same query, per month), and the keys it writes come from
    the rows it has just written. Other users, and calls inside a transaction, fire them.

    `rebuild_indexes`: the secondary indexes of the tables it fills (both databases) are dropped before the
    load and built again after it, as they were (sorted builds, two at a time), so that inserts do not pay
    for them row by row (most of the time otherwise). Meanwhile those tables have no secondary index: by
    default (None) only when they are all empty, and not inside a transaction.

    `journal_within_ttl`: write only the journal records still within their kind's retention
    (settings.JOURNAL_TTL_DAYS), as a deployment running the daily expiry job holds them; by default every
    interaction of the months is written.

    Called inside a transaction (a test), it writes the journal in this thread, all in that transaction;
    otherwise a thread writes one month's journal records while the next month is generated."""
    if payments < 1 or months < 1 or (events is not None and events < 0):
        raise VolumeError("payments and months are at least 1, events at least 0")
    check_databases()
    if fire_triggers is None:
        # SET LOCAL would outlast the generator in a caller's transaction.
        fire_triggers = connection.in_atomic_block or not _superuser()
    started = time.monotonic()
    now = now or timezone.now()
    events = 2 * payments if events is None else events
    run = secrets.token_hex(3)
    apps = _apps()
    choices = _price_choices()
    plan = plan_months(payments=payments, months=months, now=now)
    # Every month's partitions first (the funnel's, the payments' and the journal's): rows of a month without
    # one would all land in the default partitions.
    for table in partitions.registered():
        table.ensure(now=now, since=add_months(plan[0].start, -1))
    paid_events_per_payment = 6.0
    journey_share = min(1.0, PAID_EVENT_SHARE * events / (paid_events_per_payment * payments))
    result = VolumeResult()
    with connection.cursor() as cursor:
        if seed is not None:
            cursor.execute("SELECT setseed(%s)", [seed])
        _load_reference(cursor, apps, choices)
    sequences = {
        "payment_seq": _sequence(Payment),
        "refund_seq": _sequence(Refund),
        "entry_seq": _sequence(LedgerEntry),
        "line_seq": _sequence(LedgerLine),
    }
    inner_pad, outer_pad = _hmac_pads()
    common = {
        **sequences,
        "now": now,
        "run": run,
        "hour_bounds": _cumulative(HOUR_WEIGHTS),
        "app_bounds": _cumulative(1 / (rank + 1) ** 0.8 for rank in range(len(apps))),
        "price_bounds": _cumulative(choice.weight for choice in choices),
        "failure_codes": [code for code, _ in FAILURE_CODES],
        "failure_bounds": _cumulative(weight for _, weight in FAILURE_CODES),
        "succeeded": SUCCEEDED_SHARE,
        "partial": PARTIAL_REFUND_SHARE,
        "full": PARTIAL_REFUND_SHARE + FULL_REFUND_SHARE,
        "reversal": PARTIAL_REFUND_SHARE + FULL_REFUND_SHARE + REVERSAL_SHARE,
        "failed": SUCCEEDED_SHARE + FAILED_SHARE,
        "expired": EXPIRED_UPTO,
        "one_click": ONE_CLICK_SHARE,
        "players": max(int(payments * PLAYERS_PER_PAYMENT), 1),
        "journey_share": journey_share,
        "callback_protocols": list(CALLBACK_PROTOCOLS),
        "inner_pad": inner_pad,
        "outer_pad": outer_pad,
        "journal_ttl_days": json.dumps(settings.JOURNAL_TTL_DAYS) if journal_within_ttl else None,
        "journal_ttl_default_days": settings.JOURNAL_TTL_DEFAULT_DAYS,
    }
    given = 0
    stages: list[JournalStage] = []
    # One month's journal is written while the next month is generated: both CPUs busy, one month staged.
    in_transaction = connection.in_atomic_block
    writer = (
        _NowExecutor() if in_transaction else ThreadPoolExecutor(max_workers=1, thread_name_prefix="volume-journal")
    )
    if rebuild_indexes is None:
        rebuild_indexes = not in_transaction and tables_are_empty()
    set_aside = secondary_indexes("default") + secondary_indexes(JOURNAL) if rebuild_indexes else []
    with writer as journal_writer:
        pending: tuple[Future[int], str, float] | None = None
        try:
            if set_aside:
                progress(f"setting {len(set_aside)} secondary indexes aside for the load")
                drop_indexes(set_aside)
            for month in plan:
                if month.payments <= 0:
                    continue
                given += month.payments
                month_started = time.monotonic()
                params = {
                    **common,
                    "count": month.payments,
                    "month": month.label.replace("-", ""),
                    "day_starts": month.day_starts,
                    "day_bounds": month.day_bounds,
                }
                stage = JournalStage.named(run, month.label.replace("-", ""))
                stages.append(stage)
                events_due = round(events * given / payments) - result.events
                counts = _generate_month(
                    params, month=month.start, events_due=events_due, stage=stage, fire_triggers=fire_triggers
                )
                for name, value in counts.items():
                    setattr(result, name, getattr(result, name) + value)
                result.months.append(month.label)
                progress(
                    f"{month.label}: {counts['payments']:,} payments, {counts['events']:,} events "
                    f"in {time.monotonic() - month_started:.1f} s"
                )
                if pending is not None:
                    result.journal_records += _journal_done(pending, progress)
                pending = (
                    journal_writer.submit(_write_journal_in_thread, stage, params),
                    month.label,
                    time.monotonic(),
                )
            if pending is not None:
                result.journal_records += _journal_done(pending, progress)
        finally:
            with connections[JOURNAL].cursor() as cursor:
                for stage in stages:
                    stage.drop(cursor)
            if set_aside:
                # Also after a failed month: the tables get their indexes back whatever happened.
                built_from = time.monotonic()
                build_indexes(set_aside)
                progress(f"built {len(set_aside)} indexes again in {time.monotonic() - built_from:.1f} s")
    progress("vacuuming and analysing the tables")
    analyse()
    result.seconds = time.monotonic() - started
    return result


def _superuser() -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('is_superuser') = 'on'")
        row = cursor.fetchone()
    return bool(row and row[0])


def _load_reference(cursor: Any, apps: list[App], choices: list[PriceChoice]) -> None:
    cursor.execute(REFERENCE_TABLES)
    with cursor.copy("COPY volume_app FROM STDIN") as copy:
        for n, app in enumerate(apps, start=1):
            copy.write_row((n, app.pk, app.name))
    with cursor.copy("COPY volume_price FROM STDIN") as copy:
        for n, choice in enumerate(choices, start=1):
            price_point = choice.price_point
            carrier = price_point.carrier
            copy.write_row(
                (
                    n,
                    price_point.pk,
                    carrier.pk,
                    carrier.slug,
                    carrier.protocol,
                    carrier.country_id,
                    price_point.code,
                    price_point.amount_minor,
                    price_point.currency,
                    choice.msisdn_prefix,
                    choice.msisdn_digits,
                    choice.one_click,
                    choice.refund_via_carrier,
                    choice.reversal_via_carrier,
                )
            )
    with cursor.copy("COPY volume_lines FROM STDIN") as copy:
        for row in _ledger_rows(apps, choices):
            copy.write_row(row)
    with cursor.copy("COPY volume_path FROM STDIN") as copy:
        for path in _paths():
            copy.write_row((*path, PLATFORM_STEPS.get(path[5], "")))
    cursor.execute("ANALYZE volume_app; ANALYZE volume_price; ANALYZE volume_lines; ANALYZE volume_path")


def _generate_month(
    params: dict[str, Any], *, month: date, events_due: int, stage: JournalStage, fire_triggers: bool
) -> dict[str, int]:
    counts: dict[str, int] = {}
    month_starts, month_ends = partitions.month_bounds(month)
    with transaction.atomic(), connection.cursor() as cursor:
        # Dropped at commit; inside an outer transaction (a test's) the last month's are still there.
        cursor.execute("DROP TABLE IF EXISTS volume_chunk, volume_refund, volume_entry, volume_event")
        _bulk_load(cursor)
        cursor.execute(f"SET LOCAL work_mem = '{WORK_MEM}'")
        cursor.execute("SET LOCAL jit = off")
        if not fire_triggers:
            cursor.execute("SET LOCAL session_replication_role = replica")
        cursor.execute(CHUNK_SQL, params)
        cursor.execute("ANALYZE volume_chunk")
        counts["payments"] = _insert(cursor, Payment, PAYMENT_VALUES, "volume_chunk", params)
        _insert(cursor, PaymentIdempotencyKey, IDEMPOTENCY_KEY_VALUES, "volume_chunk", params)
        claim_carrier_references(cursor, params)
        counts["history"] = _insert(cursor, PaymentStatusChange, HISTORY_VALUES, HISTORY_SOURCE, params)
        cursor.execute(REFUNDS_SQL, params)
        counts["refunds"] = _insert(cursor, Refund, REFUND_VALUES, "volume_refund", params)
        counts["reversals"] = _insert(cursor, Reversal, REVERSAL_VALUES, REVERSAL_SOURCE, params)
        cursor.execute(ENTRIES_SQL, params)
        counts["ledger_entries"] = _insert(cursor, LedgerEntry, ENTRY_VALUES, "volume_entry", params)
        cursor.execute("SELECT nextval(%s)", [params["line_seq"]])
        first_line = int(cursor.fetchone()[0])
        counts["ledger_lines"] = _insert(cursor, LedgerLine, LINE_VALUES, LINES_SOURCE, params)
        if not fire_triggers:
            cursor.execute(UNBALANCED_SQL, {"first_line": first_line})
            unbalanced = cursor.fetchall()
            if unbalanced:
                raise VolumeError(f"unbalanced ledger entries (entry, currency, sum): {unbalanced}")
        # The figures each payment keeps from its ledger: the month's lines counted at once, where the ledger's
        # service adds them entry by entry.
        ledger.fill_payment_figures(created_from=month_starts, created_before=month_ends)

        cursor.execute(PAID_EVENTS_SQL)
        paid_events = int(cursor.fetchone()[0])
        drops = max(math.ceil((events_due - paid_events) / DROP_EVENTS), 0)
        cursor.execute(EVENTS_SQL, {**params, "drops": drops})
        counts["events"] = _insert(cursor, FunnelEvent, EVENT_VALUES, "volume_event", params)
        _insert(cursor, FunnelEventKey, {"app_id": "app_id", "event_id": "event_id"}, "volume_event", params)
        counts["journeys"] = _insert(cursor, Journey, JOURNEY_VALUES, JOURNEY_SOURCE, params)
        _stage_journal(cursor, stage, params["run"])
    return counts


def _journal_done(pending: tuple[Future[int], str, float], progress: Callable[[str], None]) -> int:
    future, label, submitted = pending
    written = future.result()
    progress(f"{label}: {written:,} journal records ({time.monotonic() - submitted:.1f} s after the month)")
    return written


def claim_carrier_references(cursor: Any, params: Any) -> None:
    """Claim the carrier references of the month's payments (`volume_chunk`); a reference another payment
    holds already is taken from the later payment. The update runs only when some reference was not claimed."""
    claimed = _insert(cursor, PaymentCarrierReference, CARRIER_REFERENCE_VALUES, CARRIER_REFERENCE_SOURCE, params)
    cursor.execute(REFERENCES_DRAWN_SQL)
    if claimed < int(cursor.fetchone()[0]):
        cursor.execute(REFERENCES_TAKEN_SQL)


def _insert(cursor: Any, model: type[models.Model], values: Mapping[str, str], source: str, params: Any) -> int:
    cursor.execute(insert_sql(model, values, source), params)
    return int(cursor.rowcount)


@dataclass(frozen=True)
class JournalStage:
    """The month's staging tables in the journal's database."""

    payments: str
    refunds: str

    @classmethod
    def named(cls, run: str, month: str) -> JournalStage:
        return cls(f"volume_stage_payment_{run}_{month}", f"volume_stage_refund_{run}_{month}")

    def drop(self, cursor: Any) -> None:
        cursor.execute(f"DROP TABLE IF EXISTS {self.payments}, {self.refunds}")


def _stage_journal(source_cursor: Any, stage: JournalStage, run: str) -> None:
    """Copy the rows the month's interactions are made of into the journal's database."""
    with transaction.atomic(using=JOURNAL), connections[JOURNAL].cursor() as cursor:
        _bulk_load(cursor)
        stage.drop(cursor)
        cursor.execute(JOURNAL_STAGING.format(payments=stage.payments, refunds=stage.refunds))
        for outgoing, table in ((JOURNAL_PAYMENTS_OUT, stage.payments), (JOURNAL_REFUNDS_OUT, stage.refunds)):
            query = outgoing.replace("%(run)s", sql.Literal(run).as_string())
            with source_cursor.copy(query) as copy_out, cursor.copy(f"COPY {table} FROM STDIN") as copy_in:
                for data in copy_out:
                    copy_in.write(data)


def _write_journal(stage: JournalStage, params: dict[str, Any]) -> int:
    """The month's journal records, built by PostgreSQL from the staged rows (in a thread of its own, with
    its own connection, while the next month is generated)."""
    with transaction.atomic(using=JOURNAL), connections[JOURNAL].cursor() as cursor:
        _bulk_load(cursor)
        interactions = JOURNAL_SOURCE.format(payments=stage.payments, refunds=stage.refunds)
        if params["journal_ttl_days"] is not None:
            interactions = JOURNAL_WITHIN_TTL.format(source=interactions)
        source = JOURNAL_HASHED.replace("{source}", interactions)
        cursor.execute(insert_sql(JournalRecord, JOURNAL_VALUES, source), params)
        written = int(cursor.rowcount)
        stage.drop(cursor)
    return written


def _write_journal_in_thread(stage: JournalStage, params: dict[str, Any]) -> int:
    try:
        return _write_journal(stage, params)
    finally:
        connections[JOURNAL].close()


class _NowExecutor:
    """Runs the journal's work at once, in this thread: inside a transaction (a test's), what the months
    write is not committed, so another connection would not see it."""

    def submit(self, function: Callable[..., int], *args: Any) -> Future[int]:
        future: Future[int] = Future()
        future.set_result(_write_journal(*args))
        return future

    def __enter__(self) -> _NowExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


VOLUME_MODELS: list[type[models.Model]] = [
    Payment,
    PaymentIdempotencyKey,
    PaymentCarrierReference,
    PaymentStatusChange,
    Refund,
    Reversal,
    LedgerEntry,
    LedgerLine,
    Journey,
    FunnelEvent,
    FunnelEventKey,
]


def analyse() -> None:
    """Vacuum and planner statistics for what was just written, as autovacuum would leave the tables later
    (after slow reports): the visibility map lets the funnel report read events by an index-only scan, the
    statistics plan every report. The journal's records (the biggest table) on one connection while the
    other tables are done on another. Inside a transaction (a test's), where VACUUM cannot run, statistics
    only, in it."""
    work = [(JOURNAL, loaded_tables(JOURNAL)), ("default", loaded_tables("default"))]
    if connection.in_atomic_block:
        for alias, tables in work:
            _analyse(alias, tables)
        return
    with ThreadPoolExecutor(max_workers=BUILDERS, thread_name_prefix="volume-analyse") as analysers:
        for done in [analysers.submit(_vacuum_in_thread, alias, tables) for alias, tables in work]:
            done.result()


def _analyse(alias: str, tables: list[str]) -> None:
    with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
        _long_statements(cursor)
        for table in tables:
            cursor.execute(f"ANALYZE {sql.Identifier(table).as_string()}")


def _vacuum_in_thread(alias: str, tables: list[str]) -> None:
    try:
        with connections[alias].cursor() as cursor:  # autocommit: VACUUM runs outside a transaction
            cursor.execute(f"SET statement_timeout = '{STATEMENT_TIMEOUT}'")
            for table in tables:
                cursor.execute(f"VACUUM (ANALYZE) {sql.Identifier(table).as_string()}")
    finally:
        connections[alias].close()


def _long_statements(cursor: Any) -> None:
    """For the rest of the transaction: statements may run long, the connection may wait on the other."""
    cursor.execute(f"SET LOCAL statement_timeout = '{STATEMENT_TIMEOUT}'")
    cursor.execute(f"SET LOCAL idle_in_transaction_session_timeout = '{STATEMENT_TIMEOUT}'")


def _bulk_load(cursor: Any) -> None:
    """For the rest of a loading transaction: long statements, and a commit that does not wait for its WAL to
    reach the disk (a crash loses the last months written, never leaves half of one: generated data, made
    again by running the generator again)."""
    _long_statements(cursor)
    cursor.execute("SET LOCAL synchronous_commit = off")


# --- Fast load: secondary indexes set aside, built once at the end ------------------------------------


@dataclass(frozen=True)
class SecondaryIndex:
    """An index no constraint stands on (primary keys, unique and exclusion constraints keep theirs), as
    `pg_get_indexdef` gives it: on a partitioned table, the parent's index, which builds one per partition."""

    alias: str
    table: str
    name: str
    definition: str


SECONDARY_INDEXES_SQL = """
SELECT t.relname, i.relname, pg_get_indexdef(i.oid)
FROM pg_index x
JOIN pg_class i ON i.oid = x.indexrelid
JOIN pg_class t ON t.oid = x.indrelid
WHERE t.relname = ANY(%s) AND t.relnamespace = to_regnamespace(current_schema())
  AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.oid AND c.contype IN ('p', 'u', 'x'))
ORDER BY t.relname, i.relname
"""


def loaded_tables(alias: str) -> list[str]:
    """The tables the generator fills in database `alias`."""
    models_here = [JournalRecord] if alias == JOURNAL else VOLUME_MODELS
    return [model._meta.db_table for model in models_here]


def secondary_indexes(alias: str) -> list[SecondaryIndex]:
    """The secondary indexes of the tables the generator fills in `alias`."""
    with connections[alias].cursor() as cursor:
        cursor.execute(SECONDARY_INDEXES_SQL, [loaded_tables(alias)])
        return [SecondaryIndex(alias, *row) for row in cursor.fetchall()]


def _biggest_first(indexes: list[SecondaryIndex]) -> list[SecondaryIndex]:
    """The indexes of the biggest tables (partitions included) first: the longest builds start first."""
    sizes: dict[tuple[str, str], int] = {}
    for alias in {index.alias for index in indexes}:
        with connections[alias].cursor() as cursor:
            cursor.execute(
                "SELECT t, (SELECT coalesce(sum(pg_relation_size(relid)), 0) FROM pg_partition_tree(t::regclass)) "
                "FROM unnest(%s::text[]) AS t",
                [sorted({index.table for index in indexes if index.alias == alias})],
            )
            sizes.update({(alias, table): int(size) for table, size in cursor.fetchall()})
    return sorted(indexes, key=lambda index: -sizes[(index.alias, index.table)])


def drop_indexes(indexes: list[SecondaryIndex]) -> None:
    for alias in {index.alias for index in indexes}:
        with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
            _long_statements(cursor)
            for index in indexes:
                if index.alias == alias:
                    cursor.execute(f"DROP INDEX IF EXISTS {sql.Identifier(index.name).as_string()}")


def build_indexes(indexes: list[SecondaryIndex], *, in_parallel: int = BUILDERS) -> None:
    """Build the indexes again, as they were defined (sorted builds, much cheaper than taking the rows one by
    one), `in_parallel` at a time, each with its own connection and MAINTENANCE_WORK_MEM. Inside a
    transaction (a test's) they are built in this thread, in that transaction."""
    indexes = _biggest_first(indexes)
    if connection.in_atomic_block:
        # PostgreSQL builds no index on a table with checks still due at commit: they are made now (the
        # deferrable constraints and triggers here are all initially deferred, which they are again after).
        for alias in {index.alias for index in indexes}:
            with connections[alias].cursor() as cursor:
                cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        for index in indexes:
            _build_index(index)
        for alias in {index.alias for index in indexes}:
            with connections[alias].cursor() as cursor:
                cursor.execute("SET CONSTRAINTS ALL DEFERRED")
        return
    if in_parallel <= 1:
        for index in indexes:
            _build_index(index)
        return
    with ThreadPoolExecutor(max_workers=in_parallel, thread_name_prefix="volume-index") as builders:
        for built in [builders.submit(_build_index_in_thread, index) for index in indexes]:
            built.result()


def _build_index(index: SecondaryIndex) -> None:
    with transaction.atomic(using=index.alias), connections[index.alias].cursor() as cursor:
        _bulk_load(cursor)
        cursor.execute(f"SET LOCAL maintenance_work_mem = '{MAINTENANCE_WORK_MEM}'")
        # The builders already keep the CPUs busy: a parallel build each would only make them wait on each other.
        cursor.execute("SET LOCAL max_parallel_maintenance_workers = 0")
        # Those a failed drop left in place stay as they are.
        definition = re.sub(r"^CREATE (UNIQUE )?INDEX ", r"CREATE \1INDEX IF NOT EXISTS ", index.definition)
        # A partitioned table's index reads `ON ONLY <table>`; built on the table, it is built on every partition.
        cursor.execute(definition.replace(" ON ONLY ", " ON ", 1))
        # Built from PostgreSQL's own text, an index reads as it did; one that would not (a predicate spelled
        # another way) stops the generator rather than leave a schema the migrations did not make.
        cursor.execute("SELECT pg_get_indexdef(%s::regclass)", [sql.Identifier(index.name).as_string()])
        row = cursor.fetchone()
        if row is None or row[0] != index.definition:
            raise VolumeError(f"index {index.name} reads differently once built again: {row and row[0]}")


def _build_index_in_thread(index: SecondaryIndex) -> None:
    try:
        _build_index(index)
    finally:
        connections[index.alias].close()


def tables_are_empty() -> bool:
    """Whether none of the tables the generator fills has a row yet (a database just migrated and seeded)."""
    for alias in ("default", JOURNAL):
        with connections[alias].cursor() as cursor:
            for table in loaded_tables(alias):
                cursor.execute(f"SELECT EXISTS (SELECT 1 FROM {sql.Identifier(table).as_string()})")
                row = cursor.fetchone()
                if row and row[0]:
                    return False
    return True
