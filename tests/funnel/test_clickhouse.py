"""The analytics tier on ClickHouse: shipping from PostgreSQL, and funnel reports by windowFunnel.

ClickHouse here is chdb (embedded ClickHouse, the same engine as the server), reached by clickhouse-connect
through its chdb transport, and (`ch_any`) also through its HTTP transport, as a server is, with
`clickhouse_http` answering for chdb."""

import random
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import urllib3
from clickhouse_connect.driver.exceptions import OperationalError
from django.db import DatabaseError, connection
from django.db.models import Count, Sum
from django_celery_beat.models import PeriodicTask

from funnel.analytics import clickhouse
from funnel.analytics.shipping import ship_to_clickhouse
from funnel.models import AnalyticsShipment, FunnelEvent, Journey
from funnel.rollups import dashboard_report
from funnel.selectors import FunnelReport, ReportTimedOut, funnel_report
from funnel.tasks import ship_to_clickhouse as ship_task
from payments.models import Payment, PaymentStatus
from tenants.models import App
from tests.factories import AppFactory, CarrierFactory, PaymentFactory, PricePointFactory
from tests.funnel.clickhouse_http import clickhouse_http_server
from tests.funnel.report_page import page_cut_short
from tests.processes import django

if TYPE_CHECKING:  # the embedded default's script imports this module, without the test settings
    from tests.conftest import StaffClient

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 10, 1, tzinfo=UTC)
STEPS = ["open", "select", "msisdn", "pay", "charge_succeeded"]
WINDOW = timedelta(minutes=30)


@pytest.fixture
def ch(settings: Any) -> Iterator[None]:
    """Embedded ClickHouse, a database of this test's own, and rows shipped as soon as they are written."""
    settings.CLICKHOUSE_URL = "chdb://memory"
    settings.CLICKHOUSE_DATABASE = f"test_{uuid.uuid4().hex}"
    settings.ANALYTICS_SETTLE_SECONDS = 0
    yield
    clickhouse.client().command(f"DROP DATABASE IF EXISTS {settings.CLICKHOUSE_DATABASE}")


@pytest.fixture(params=["chdb", "http"])
def ch_any(request: pytest.FixtureRequest, ch: None, settings: Any) -> Iterator[None]:
    """The same, reached through clickhouse-connect's chdb transport, then through its HTTP transport."""
    if request.param == "chdb":
        yield
        return
    with clickhouse_http_server() as url:
        settings.CLICKHOUSE_URL = url
        yield
    settings.CLICKHOUSE_URL = "chdb://memory"  # for `ch` to drop the database


def ch_rows(query: str) -> list[tuple[Any, ...]]:
    return [tuple(row) for row in clickhouse.client().query(query.format(db=clickhouse.database())).result_rows]


def ch_scalar(query: str) -> Any:
    return ch_rows(query)[0][0]


def add_events(app: App, journeys: int, *, start: datetime = T0) -> None:
    for n in range(journeys):
        journey_id = f"j{n}"
        Journey.objects.create(app=app, journey_id=journey_id, started_at=start, carrier="c1")
        for k, step in enumerate(STEPS[:3]):
            FunnelEvent.objects.create(
                app=app,
                journey_id=journey_id,
                event_id=f"{journey_id}-{k}",
                step=step,
                occurred_at=start + timedelta(minutes=k),
                source="game",
            )


def test_shipping_sends_every_event_and_journey_once_in_batches(ch_any: None) -> None:
    app = AppFactory.create()
    add_events(app, 9)  # 27 events
    shipped = {s.source: s for s in ship_to_clickhouse(batch_rows=10)}
    assert (shipped["funnel_events"].rows, shipped["funnel_events"].batches) == (27, 3)
    assert shipped["funnel_journeys"].rows == 9
    assert ch_scalar("SELECT count() FROM {db}.funnel_events") == 27
    assert ch_scalar("SELECT count() FROM {db}.funnel_journeys") == 9
    mark = AnalyticsShipment.objects.get(source="funnel_events")
    assert mark.last_id == FunnelEvent.objects.order_by("-id").values_list("id", flat=True)[0]

    assert all(s.rows == 0 for s in ship_to_clickhouse(batch_rows=10))  # nothing new
    assert ch_scalar("SELECT count() FROM {db}.funnel_events") == 27


def test_rows_younger_than_the_settle_time_wait_for_the_next_run(ch: None, settings: Any) -> None:
    settings.ANALYTICS_SETTLE_SECONDS = 3600  # nothing written in the last hour is surely committed
    add_events(AppFactory.create(), 2)
    assert all(s.rows == 0 for s in ship_to_clickhouse())
    settings.ANALYTICS_SETTLE_SECONDS = 0
    assert {s.source: s.rows for s in ship_to_clickhouse()}["funnel_events"] == 6


@contextmanager
def marks_refused() -> Iterator[None]:
    """PostgreSQL refuses to move any shipping mark, as when the database fails right after ClickHouse
    has taken a batch."""
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE FUNCTION refuse_mark() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'database unavailable'; END $$"
        )
        cursor.execute(
            "CREATE TRIGGER refuse_mark BEFORE UPDATE ON funnel_analyticsshipment "
            "FOR EACH ROW WHEN (NEW.last_id <> OLD.last_id) EXECUTE FUNCTION refuse_mark()"
        )
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP TRIGGER refuse_mark ON funnel_analyticsshipment")
            cursor.execute("DROP FUNCTION refuse_mark()")


@pytest.mark.django_db(transaction=True)  # the failed statement must not abort a test-wide transaction
def test_a_batch_taken_by_clickhouse_but_not_marked_is_sent_again_and_stored_once(ch_any: None) -> None:
    add_events(AppFactory.create(), 4)  # 12 events
    with marks_refused(), pytest.raises(DatabaseError, match="database unavailable"):
        ship_to_clickhouse()
    assert ch_scalar("SELECT count() FROM {db}.funnel_events") == 12  # ClickHouse took the batch
    assert AnalyticsShipment.objects.get(source="funnel_events").last_id == 0

    shipped = {s.source: s.rows for s in ship_to_clickhouse()}  # the restart sends the batch again
    assert shipped["funnel_events"] == 12
    assert ch_scalar("SELECT count() FROM {db}.funnel_events") == 12  # the repeated block was dropped
    assert AnalyticsShipment.objects.get(source="funnel_events").last_id == FunnelEvent.objects.latest("id").id


def test_a_repeat_sent_in_other_batches_is_merged_away(ch: None) -> None:
    add_events(AppFactory.create(), 4)  # 12 events
    ship_to_clickhouse(batch_rows=5)
    AnalyticsShipment.objects.filter(source="funnel_events").update(last_id=0)  # as if the marks were restored
    ship_to_clickhouse(batch_rows=7)  # other blocks: not dropped at insert
    assert ch_scalar("SELECT count() FROM {db}.funnel_events FINAL") == 12
    assert ch_scalar("SELECT uniqExact(id) FROM {db}.funnel_events") == 12


def test_while_clickhouse_is_unreachable_nothing_is_marked_and_shipping_resumes_after(ch: None, settings: Any) -> None:
    add_events(AppFactory.create(), 3)
    database = settings.CLICKHOUSE_DATABASE
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings.CLICKHOUSE_URL = f"http://127.0.0.1:{port}"
    settings.CLICKHOUSE_CONNECT_TIMEOUT = 1
    with pytest.raises(Exception, match=r"(?i)connect|refused"):
        ship_task.apply().get()
    assert not AnalyticsShipment.objects.filter(last_id__gt=0).exists()

    settings.CLICKHOUSE_URL = "chdb://memory"
    settings.CLICKHOUSE_DATABASE = database
    assert ship_task.apply().get() == "funnel_events 9, funnel_journeys 3"
    assert ch_scalar("SELECT count() FROM {db}.funnel_events") == 9


def test_payment_changes_replace_their_earlier_rows_and_totals_match_postgresql(ch_any: None) -> None:
    rng = random.Random(7)
    app = AppFactory.create()
    price_points = [
        PricePointFactory.create(carrier=CarrierFactory.create(), code=code, amount_minor=amount, currency=currency)
        for code, amount, currency in [("gems-100", 99, "GBP"), ("gems-500", 499, "GBP"), ("coins", 300, "EUR")]
    ]
    payments = [PaymentFactory.create(app=app, price_point=rng.choice(price_points)) for _ in range(40)]
    ship_to_clickhouse()
    for payment in rng.sample(payments, 25):  # their outcomes arrive after the first shipping
        payment.status = rng.choice([PaymentStatus.SUCCEEDED, PaymentStatus.FAILED])
        payment.failure_code = "insufficient_funds" if payment.status == PaymentStatus.FAILED else ""
        payment.save()
    ship_to_clickhouse()

    expected = {
        (row["carrier__slug"], row["currency"], row["status"]): (row["payments"], row["gross"])
        for row in Payment.objects.values("carrier__slug", "currency", "status").annotate(
            payments=Count("id"), gross=Sum("amount_minor")
        )
    }
    rows = ch_rows(
        "SELECT carrier, currency, status, count(), sum(amount_minor) FROM {db}.payments FINAL "
        "GROUP BY carrier, currency, status"
    )
    assert {(carrier, currency, status): (n, gross) for carrier, currency, status, n, gross in rows} == expected
    assert ch_scalar("SELECT count() FROM {db}.payments FINAL WHERE status = 'created'") == 15


def random_journeys(app: App, rng: random.Random, journeys: int, *, resolution: int = 0) -> None:
    """Journeys over two days with repeats, steps out of order, noise, an exclusion step and late steps;
    with a `resolution` (seconds), times are rounded down to it, so that many events share a timestamp."""
    seconds = rng.sample(range(0, 2 * 86_400 * 10), journeys * 12)  # distinct timestamps (0.1 s apart)
    noise = ["help", "charge_failed", "item_viewed"]
    for n in range(journeys):
        journey_id = f"j{n}"
        start = T0 + timedelta(seconds=seconds[n * 12] / 10)
        offsets = [s / 10 % 3600 for s in seconds[n * 12 + 1 : n * 12 + 12]]
        times = sorted(start + timedelta(seconds=o // resolution * resolution if resolution else o) for o in offsets)
        steps = [rng.choice(STEPS + noise) if rng.random() < 0.4 else STEPS[min(i, 4)] for i in range(11)]
        events = [(start, "open"), *list(zip(times, steps, strict=True))[: rng.randint(0, 10)]]
        Journey.objects.create(
            app=app, journey_id=journey_id, started_at=start, carrier=rng.choice(["c1", "c2", ""]), country="GB"
        )
        FunnelEvent.objects.bulk_create(
            FunnelEvent(
                app=app,
                journey_id=journey_id,
                event_id=f"{journey_id}-{k}",
                step=step,
                occurred_at=at,
                source="game",
                error_code=rng.choice(["insufficient_funds", "blocked"]) if step == "charge_failed" else "",
            )
            for k, (at, step) in enumerate(events)
        )


def report(settings: Any, backend: str, **options: Any) -> FunnelReport:
    settings.ANALYTICS_BACKEND = backend
    return funnel_report(steps=STEPS, window=WINDOW, **options)


@pytest.mark.parametrize(("seed", "resolution"), [(1, 0), (2, 0), (3, 60)])
def test_clickhouse_reports_equal_postgresql_reports_on_random_journeys(
    ch_any: None, settings: Any, seed: int, resolution: int
) -> None:
    rng = random.Random(seed)
    app, other = AppFactory.create(), AppFactory.create()
    random_journeys(app, rng, 150, resolution=resolution)
    random_journeys(other, rng, 50, resolution=resolution)
    ship_to_clickhouse()
    since = T0 + timedelta(hours=rng.randint(0, 12))
    for options in [
        {"since": since, "until": since + timedelta(days=1), "breakdown": "carrier"},
        {"since": since, "until": since + timedelta(hours=30), "exclusion": "help", "app_id": app.pk},
        {"since": T0, "until": T0 + timedelta(days=3), "breakdown": "app"},
    ]:
        expected = report(settings, "postgres", **options)
        assert expected.journeys > 0
        assert report(settings, "clickhouse", **options) == expected


def test_same_timestamp_events_count_in_step_order_in_clickhouse(ch_any: None, settings: Any) -> None:
    app = AppFactory.create()
    Journey.objects.create(app=app, journey_id="j", started_at=T0)
    # "select" arrives after "msisdn" with the same timestamp: windowFunnel sorts ties by step.
    for k, (minutes, step) in enumerate([(0, "open"), (5, "msisdn"), (5, "select")]):
        FunnelEvent.objects.create(
            app=app,
            journey_id="j",
            event_id=f"e{k}",
            step=step,
            occurred_at=T0 + timedelta(minutes=minutes),
            source="game",
        )
    ship_to_clickhouse()
    result = report(settings, "clickhouse", since=T0, until=T0 + timedelta(hours=1))
    assert [step.entered for step in result.steps] == [1, 1, 1, 0, 0]
    assert result.steps[2].median_seconds_from_previous == 0.0


def test_dashboards_read_clickhouse_only_when_it_is_the_analytics_backend(ch: None, settings: Any) -> None:
    from funnel.models import FunnelDefinition

    app = AppFactory.create()
    add_events(app, 2)
    definition = FunnelDefinition.objects.create(name="f", steps=STEPS, window_seconds=1800)
    until = T0 + timedelta(days=1)
    assert (
        dashboard_report(funnel=definition, since=T0, until=until)[1] == "events"
    )  # the default reads PostgreSQL; ClickHouse is empty
    settings.ANALYTICS_BACKEND = "clickhouse"
    ship_to_clickhouse()
    report_, source = dashboard_report(funnel=definition, since=T0, until=until)
    assert source == "clickhouse"
    assert [step.entered for step in report_.steps] == [2, 2, 2, 0, 0]


def test_without_clickhouse_the_shipping_job_does_nothing(settings: Any) -> None:
    settings.CLICKHOUSE_URL = ""
    add_events(AppFactory.create(), 1)
    assert ship_task.apply().get() == ""
    assert not AnalyticsShipment.objects.exists()
    assert PeriodicTask.objects.get(name="funnel: ship to ClickHouse").task == "funnel.tasks.ship_to_clickhouse"


EMBEDDED_SCRIPT = """
from datetime import UTC, datetime, timedelta
from django.test import override_settings
from funnel.analytics.shipping import ship_to_clickhouse
from funnel.models import FunnelEvent, Journey
from funnel.selectors import funnel_report
from tenants.models import App
t0 = datetime(2026, 10, 1, tzinfo=UTC)
app = App.objects.create(name="game")
for n, steps in enumerate([["open", "select", "pay"], ["open", "select"], ["open"]]):
    Journey.objects.create(app=app, journey_id=f"j{n}", started_at=t0)
    for k, step in enumerate(steps):
        FunnelEvent.objects.create(app=app, journey_id=f"j{n}", event_id=f"{n}-{k}", step=step,
                                   occurred_at=t0 + timedelta(minutes=k), source="game")
ship_to_clickhouse()
def entered(backend):
    with override_settings(ANALYTICS_BACKEND=backend):
        report = funnel_report(
            steps=["open", "select", "pay"], window=timedelta(hours=1), since=t0, until=t0 + timedelta(days=1)
        )
    return [step.entered for step in report.steps]
print(entered("postgres"), entered("clickhouse"))
"""


def test_the_embedded_default_ships_from_sqlite_to_embedded_clickhouse(tmp_path: Path) -> None:
    env = {
        "PLAYPAY_VAR_DIR": str(tmp_path),
        "CLICKHOUSE_URL": f"chdb://{tmp_path / 'clickhouse'}",
        "ANALYTICS_SETTLE_SECONDS": "0",
    }
    assert django(["migrate", "-v", "0"], env).returncode == 0
    result = django(["shell", "-c", EMBEDDED_SCRIPT], env)
    assert result.returncode == 0, result.stderr
    # SQLite's report (Python's windowFunnel) and ClickHouse's agree.
    assert result.stdout.strip().splitlines()[-1] == "[3, 2, 1] [3, 2, 1]"


def test_clickhouse_reports_without_a_clickhouse_url_are_refused_at_start(tmp_path: Path) -> None:
    refused = django(["check"], {"ANALYTICS_BACKEND": "clickhouse", "PLAYPAY_VAR_DIR": str(tmp_path)})
    assert refused.returncode != 0
    assert "ANALYTICS_BACKEND=clickhouse needs CLICKHOUSE_URL" in refused.stderr


def test_a_clickhouse_report_too_slow_for_a_web_request_is_cut_short_and_the_page_says_why(
    ch_any: None, settings: Any, staff_client: "StaffClient"
) -> None:
    from funnel.models import FunnelDefinition

    add_events(AppFactory.create(), 300)
    ship_to_clickhouse()
    settings.ANALYTICS_BACKEND = "clickhouse"
    funnel = FunnelDefinition.objects.create(name="shop", steps=STEPS, window_seconds=1800)
    url = f"/admin/funnel/funneldefinition/{funnel.pk}/report/"
    params = {"since": f"{T0:%Y-%m-%d}", "until": f"{T0:%Y-%m-%d}", "breakdown": "carrier"}
    # Reading and joining the tables alone takes longer than a millisecond: ClickHouse stops the statement.
    page = page_cut_short(staff_client("superuser"), url, params, settings, journeys=300)
    assert "in ClickHouse" in page
    with pytest.raises(ReportTimedOut) as stopped:
        funnel_report(steps=STEPS, window=WINDOW, since=T0, until=T0 + timedelta(days=1), timeout_ms=1)
    cause = stopped.value.__cause__
    assert cause is not None
    assert clickhouse.is_timeout(cause)  # ClickHouse's own TIMEOUT_EXCEEDED
    # Reports outside a web request keep the longer CLICKHOUSE_QUERY_TIMEOUT.
    assert funnel_report(steps=STEPS, window=WINDOW, since=T0, until=T0 + timedelta(days=1)).journeys == 300


def chained(*errors: BaseException) -> BaseException:
    """The first error raised from the second, raised from the third, and so on (as raising them would)."""
    for outer, inner in pairwise(errors):
        outer.__cause__ = inner
    return errors[0]


def test_a_client_side_read_timeout_is_told_through_what_wraps_it() -> None:
    pool = urllib3.HTTPConnectionPool("clickhouse.invalid")
    read_timeout = urllib3.exceptions.ReadTimeoutError(pool, "/", "Read timed out. (read timeout=1)")
    # urllib3 keeps what failed as the reason of MaxRetryError when the client retries; clickhouse_connect
    # raises its own error from it.
    retried = urllib3.exceptions.MaxRetryError(pool, "/", reason=read_timeout)
    assert clickhouse.is_timeout(chained(OperationalError("HTTP driver error"), retried))
    assert clickhouse.is_timeout(chained(OperationalError("HTTP driver error"), read_timeout))
    # A socket's own timeout (socket.timeout is TimeoutError), further down.
    socket_timeout = chained(OperationalError("HTTP driver error"), ValueError("wrapped"), TimeoutError("timed out"))
    assert clickhouse.is_timeout(socket_timeout)
    refused = urllib3.exceptions.MaxRetryError(pool, "/", reason=ConnectionRefusedError("refused"))
    assert not clickhouse.is_timeout(chained(OperationalError("HTTP driver error"), refused))
    assert not clickhouse.is_timeout(OperationalError("HTTP driver error"))
