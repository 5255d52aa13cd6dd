"""PlayPay settings, read from environment variables (see README, "Configuration").

With nothing set this is the embedded default: a SQLite file under var/,
Celery tasks run in-process, an in-memory cache. Production sets DATABASE_URL,
CELERY_BROKER_URL, CACHE_URL, SECRET_KEY, CARRIER_CREDENTIALS_KEY, ALLOWED_HOSTS, DEBUG=false and
PLAYPAY_ENV=production (which refuses to start with the sandbox on, or without its own secrets).
"""

import re
from pathlib import Path

import dj_database_url
import django_stubs_ext
from django.core.exceptions import ImproperlyConfigured
from django.templatetags.static import static

from playpay.env import env_bool, env_int, env_list, env_str
from playpay.logging import logging_config

# Lets admin and queryset classes take type parameters at run time, as django-stubs declares them.
django_stubs_ext.monkeypatch()

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("PLAYPAY_VAR_DIR", str(BASE_DIR / "var")))

DEBUG = env_bool("DEBUG", False)
# The fallback key is only for the embedded default; `check --deploy` flags it, and a production deployment
# (PLAYPAY_ENV=production) refuses to start without SECRET_KEY (below, with CARRIER_CREDENTIALS_KEY).
SECRET_KEY = env_str("SECRET_KEY", "django-insecure-embedded-default-do-not-use-in-production")
# Former SECRET_KEYs, comma-separated: sessions and signed values made under them stay valid while rotating.
SECRET_KEY_FALLBACKS = env_list("SECRET_KEY_FALLBACKS", [])
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    # django-unfold, the admin's look (before the admin, whose templates it overrides), and its integrations.
    "unfold.apps.BasicAppConfig",  # not its default config, which would replace PlayPayAdminSite with its own
    "unfold.contrib.filters",
    "unfold.contrib.forms",
    "unfold.contrib.import_export",
    "unfold.contrib.simple_history",
    "playpay.apps.PlayPayAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django_otp",
    "django_otp.plugins.otp_totp",
    "axes",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_beat",
    "import_export",
    # Before/after history of configuration (carriers, price points, routing, apps, API keys, roles).
    "simple_history",
    "playpay.apps.PlayPayConfig",
    "tenants",
    "carriers",
    "payments",
    "subscriptions",
    "funnel",
    "reporting",
    "journal",
]

MIDDLEWARE = [
    # First: they time the whole request and give every log line its request id.
    "playpay.middleware.MetricsMiddleware",
    "playpay.middleware.RequestContextMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Who made a change through the admin, for the configuration history (django-simple-history).
    "simple_history.middleware.HistoryRequestMiddleware",
    "django_otp.middleware.OTPMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "journal.middleware.JournalMiddleware",
    # After the journal, so that a request refused here (413, or 400 for its query) is journaled too.
    "playpay.api.limits.RequestLimitsMiddleware",
    # Last, as django-axes requires: it turns a locked-out login into its lockout response.
    "axes.middleware.AxesMiddleware",
]

# The configuration history is read, never replayed: its pages offer no "revert" (and journal.audit_admin
# refuses one posted anyway), which would save an old version around the services.
SIMPLE_HISTORY_REVERT_DISABLED = True

ROOT_URLCONF = "playpay.urls"
WSGI_APPLICATION = "playpay.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------
DATABASE_URL = env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'playpay.sqlite3'}")
DATABASES = {
    "default": dj_database_url.parse(
        DATABASE_URL,
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 600),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    # SQLite in the embedded default: wait for the write lock instead of failing.
    DATABASES["default"]["OPTIONS"] = {"timeout": 20, "transaction_mode": "IMMEDIATE"}
    DATABASES["default"]["CONN_MAX_AGE"] = 0

# --- Interaction journal (its own store: PostgreSQL JSONB in its own database, or MongoDB) ----------
JOURNAL_URL = env_str("JOURNAL_URL", f"sqlite:///{VAR_DIR / 'journal.sqlite3'}")
JOURNAL_BACKEND = "mongodb" if JOURNAL_URL.startswith(("mongodb://", "mongodb+srv://")) else "sql"
# With MongoDB the SQL alias only holds nothing; Django still wants it defined.
DATABASES["journal"] = dj_database_url.parse(
    JOURNAL_URL if JOURNAL_BACKEND == "sql" else f"sqlite:///{VAR_DIR / 'journal-unused.sqlite3'}",
    conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 600),
    # No `SELECT 1` before each request's record: a record that meets a connection the server dropped is
    # spooled (journal.spool, nothing lost) and Django replaces the connection at the end of that request.
    conn_health_checks=False,
)
if DATABASES["journal"]["ENGINE"] == "django.db.backends.sqlite3":
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES["journal"]["OPTIONS"] = {"timeout": 20, "transaction_mode": "IMMEDIATE"}
    DATABASES["journal"]["CONN_MAX_AGE"] = 0
# --- Read replica for reports (playpay.replica; docs/scaling.md#a-read-replica-for-reporting) ------------
# A streaming replica of DATABASE_URL: dashboards, the catalog's queries and exports read it. Unset, they read
# the main database.
REPORTING_DATABASE_URL = env_str("REPORTING_DATABASE_URL", "")
if REPORTING_DATABASE_URL:
    DATABASES["reporting"] = dj_database_url.parse(
        REPORTING_DATABASE_URL,
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 600),
        conn_health_checks=True,
    )
    if {DATABASES[alias]["ENGINE"] for alias in ("default", "reporting")} != {"django.db.backends.postgresql"}:
        raise ImproperlyConfigured("REPORTING_DATABASE_URL is a replica of DATABASE_URL: both on PostgreSQL")
    # The test runner makes no database of its own for it: in tests it reads the main test database.
    DATABASES["reporting"]["TEST"] = {"MIRROR": "default"}
DATABASE_ROUTERS = ["journal.router.JournalRouter", "playpay.replica.ReportingRouter"]

# Every PostgreSQL connection (both databases) gives up connecting after DATABASE_CONNECT_TIMEOUT seconds,
# cancels a statement after DATABASE_STATEMENT_TIMEOUT_MS and ends a session left idle inside a transaction
# after DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS (0 turns one off). A request that meets an unreachable database
# or a cancelled statement is answered 503 with Retry-After (docs/operations.md, "Database timeouts").
DATABASE_CONNECT_TIMEOUT = env_int("DATABASE_CONNECT_TIMEOUT", 5)
DATABASE_STATEMENT_TIMEOUT_MS = env_int("DATABASE_STATEMENT_TIMEOUT_MS", 30_000)
DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS = env_int("DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS", 60_000)
# A wait for another process's commit (the PIN confirm's) is woken by LISTEN/NOTIFY on the request's own session
# (playpay.postgresql.listen). Behind a pooler in transaction mode (PgBouncer's) a session is not the request's
# own: set false, and such waits poll instead.
DATABASE_LISTEN = env_bool("DATABASE_LISTEN", True)
# `manage.py migrate` runs its statements under this bound instead (a table rebuilt at volume takes minutes).
MIGRATION_STATEMENT_TIMEOUT_MS = env_int("MIGRATION_STATEMENT_TIMEOUT_MS", 4 * 3_600_000)
for _database in DATABASES.values():
    if _database["ENGINE"] == "django.db.backends.postgresql":
        # Django's backend, with a wait on a frozen server cut short (playpay/postgresql/base.py).
        _database["ENGINE"] = "playpay.postgresql"
        _given = _database.get("OPTIONS", {})
        _database["OPTIONS"] = {
            **_given,
            "connect_timeout": _given.get("connect_timeout", DATABASE_CONNECT_TIMEOUT),
            # Appended to what DATABASE_URL's ?options= says (behind PgBouncer, set these on the role instead).
            "options": " ".join(
                filter(
                    None,
                    [
                        _given.get("options", ""),
                        f"-c statement_timeout={DATABASE_STATEMENT_TIMEOUT_MS}",
                        f"-c idle_in_transaction_session_timeout={DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS}",
                    ],
                )
            ),
        }
# Where a journal record waits when the journal store cannot take it (journal.spool): a directory on a
# local persistent disk of each host (not a database, not a network share), writable by every process
# of the host that journals (gunicorn, Celery workers). Its processes drain it once the store is back.
JOURNAL_SPOOL_DIR = Path(env_str("JOURNAL_SPOOL_DIR", str(VAR_DIR / "journal-spool")))
# Only for measuring the journal's cost: production always journals.
JOURNAL_ENABLED = env_bool("JOURNAL_ENABLED", True)
# Key of the hash that lets staff search the journal by MSISDN without storing it in clear.
JOURNAL_HASH_KEY = env_str("JOURNAL_HASH_KEY", "")
# How long each kind of journal record is kept, in days (docs/journal.md#retention): kind=days pairs,
# comma-separated; a kind not listed is kept JOURNAL_TTL_DEFAULT_DAYS. The daily job *journal: expire
# records* removes what is past its kind's time.
JOURNAL_TTL_DEFAULT_DAYS = env_int("JOURNAL_TTL_DEFAULT_DAYS", 400)
JOURNAL_TTL_DAYS = {
    kind.strip(): int(days)
    for kind, _, days in (
        pair.partition("=")
        for pair in env_list(
            "JOURNAL_TTL_DAYS",
            ["api_request=90", "webhook=90", "carrier_call=400", "carrier_callback=400", "staff_action=1825"],
        )
    )
}
# Where `manage.py archive_partitions` writes the months it takes out of the database (gzip'ed CSV):
# a mounted volume that is backed up or synchronised to object storage.
PARTITION_ARCHIVE_DIR = Path(env_str("PARTITION_ARCHIVE_DIR", str(VAR_DIR / "archive")))

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Cache (rate limits) --------------------------------------------------
CACHE_URL = env_str("CACHE_URL", "")
if CACHE_URL.startswith(("redis://", "rediss://")):
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": CACHE_URL}}
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# --- Celery -----------------------------------------------------------------
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "")
# Without a broker (the embedded default) tasks run in-process, at enqueue time.
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", not CELERY_BROKER_URL)
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "default"
# Every wait on a Redis broker is bounded: connecting to it, and each of its answers (a publish after a payment's
# commit, a worker's fetch, whose BRPOP waits 1 s itself: hence at least 2 s).
BROKER_TIMEOUT_SECONDS = env_int("BROKER_TIMEOUT_SECONDS", 5)
if BROKER_TIMEOUT_SECONDS < 2:
    raise ImproperlyConfigured(
        f"BROKER_TIMEOUT_SECONDS must be at least 2, got {BROKER_TIMEOUT_SECONDS}: a worker's fetch from a Redis "
        "broker waits 1 s for a message, and its answer must come within the bound."
    )
CELERY_BROKER_CONNECTION_TIMEOUT = BROKER_TIMEOUT_SECONDS
if CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "socket_timeout": BROKER_TIMEOUT_SECONDS,
        "socket_connect_timeout": BROKER_TIMEOUT_SECONDS,
    }
if CELERY_BROKER_URL.startswith("redis://"):
    # kombu's Redis transport with one client per connection pool, not one per message (playpay.broker). Not for
    # rediss://, whose TLS kombu turns on by the transport's name.
    CELERY_BROKER_TRANSPORT = "playpay.broker:RedisTransport"
CELERY_RESULT_BACKEND = None
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
# Work the embedded default's scheduler (`manage.py run_scheduler`, no broker) runs beside the periodic tasks,
# in a thread of its own, each tick while it is idle: what a Celery worker would take from the broker.
SCHEDULER_WORKER_TASKS = ["reporting.tasks.run_queued_exports"]

# --- Background exports (reporting) ---------------------------------------------------------------
# A worker proves it is alive every this many rows; a running export silent for EXPORT_HEARTBEAT_TIMEOUT
# seconds is queued again, and failed once EXPORT_MAX_ATTEMPTS attempts have died.
EXPORT_PROGRESS_ROWS = env_int("EXPORT_PROGRESS_ROWS", 20_000)
EXPORT_HEARTBEAT_TIMEOUT = env_int("EXPORT_HEARTBEAT_TIMEOUT", 120)
EXPORT_MAX_ATTEMPTS = env_int("EXPORT_MAX_ATTEMPTS", 3)
# An export is one statement read to the end: its own bound instead of the web's DATABASE_STATEMENT_TIMEOUT_MS.
EXPORT_STATEMENT_TIMEOUT_MS = env_int("EXPORT_STATEMENT_TIMEOUT_MS", 3_600_000)
# A background CSV of at least EXPORT_PARTS_FROM_ROWS rows (PostgreSQL) is read in EXPORT_PARTS ranges of ids
# at once, each by a connection of its own: its statement keeps one core busy per connection. 1: one part.
EXPORT_PARTS = env_int("EXPORT_PARTS", 2)
EXPORT_PARTS_FROM_ROWS = env_int("EXPORT_PARTS_FROM_ROWS", 200_000)

# --- Auth, i18n, static -----------------------------------------------------
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",  # counts failed logins, refuses locked-out ones
    "django.contrib.auth.backends.ModelBackend",
]
# Staff sign in with a TOTP second factor (django-otp); on unless DEBUG.
STAFF_2FA = env_bool("STAFF_2FA", not DEBUG)
OTP_TOTP_ISSUER = "PlayPay"
# Repeated failed logins lock the username from that address for a cool-off period (django-axes).
AXES_ENABLED = env_bool("STAFF_LOCKOUT", True)
AXES_FAILURE_LIMIT = env_int("STAFF_LOCKOUT_FAILURES", 5)
AXES_COOLOFF_TIME = env_int("STAFF_LOCKOUT_MINUTES", 15) / 60  # hours
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_VERBOSE = False

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LANGUAGE_CODE = "en-us"
# The back office is in English only: every admin page would otherwise look up all of Django's ~100 languages
# for unfold's language menu (which it does not show).
LANGUAGES = [("en-us", "English")]
# Date-times shown as they are on staff pages read "2026-12-04 21:59:17 UTC" (playpay/formats/en).
FORMAT_MODULE_PATH = ["playpay.formats"]
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(BASE_DIR / "staticfiles")))
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "django.contrib.staticfiles.storage.StaticFilesStorage"
            if DEBUG
            else "whitenoise.storage.CompressedManifestStaticFilesStorage"
        )
    },
}
WHITENOISE_USE_FINDERS = DEBUG

# --- The admin's look (django-unfold) ----------------------------------------
# Its styles, scripts and fonts are static files of the package (collectstatic), never a CDN.
UNFOLD = {
    "SITE_TITLE": "PlayPay",
    "SITE_HEADER": "PlayPay back office",
    "SITE_SYMBOL": "payments",
    "SHOW_VIEW_ON_SITE": False,
    # The back office's own pages (reports, confirmations, imports) in the same look.
    "STYLES": [lambda request: static("playpay/admin.css")],
    # THEME unset: each person picks light, dark or the system's in the account menu.
    # The command palette (Ctrl+K) finds pages by name, the players and payments a term names as the payment
    # list's search box reads it (payments.admin.palette_results), and searches these models with their admin's
    # own search; the large record tables are searched from their lists.
    "COMMAND": {
        "search_callback": "payments.admin.palette_results",
        "search_models": [
            "payments.refund",
            "tenants.app",
            "tenants.apikey",
            "carriers.carrier",
            "carriers.pricepoint",
            "carriers.numberprefix",
            "carriers.country",
            "auth.user",
            "auth.group",
            "funnel.funneldefinition",
            "reporting.dashboard",
            "reporting.dataset",
        ],
        "show_history": True,
    },
    "SIDEBAR": {
        "show_search": True,
        "command_search": True,
        "show_all_applications": True,
        # Grouped by job, each link shown to whom may open it (playpay/admin_navigation.py).
        "navigation": "playpay.admin_navigation.sidebar",
    },
}

# --- Security (secure by default unless DEBUG) ------------------------------
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
# Load balancers probe over plain HTTP.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0 if DEBUG else 31_536_000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", not DEBUG)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", not DEBUG)
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", not DEBUG)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", not DEBUG)
if env_bool("SECURE_PROXY_SSL_HEADER", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
X_FRAME_OPTIONS = "DENY"

# --- API --------------------------------------------------------------------
# The one request size limit (docs/api.md, "Request limits"): the largest request the API documents,
# a funnel batch of 1,000 events with 4 KB of properties each, is under 5 MB of JSON; anything over
# this is answered 413 problem+json (playpay.api.limits). Django enforces the same number.
MAX_REQUEST_BYTES = 8 * 1024 * 1024
DATA_UPLOAD_MAX_MEMORY_SIZE = MAX_REQUEST_BYTES
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["tenants.auth.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["tenants.auth.IsApp"],
    "DEFAULT_THROTTLE_CLASSES": ["tenants.throttling.AppRateThrottle"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["playpay.api.parsers.StrictJSONParser"],
    "DEFAULT_SCHEMA_CLASS": "playpay.api.schema.StrictAutoSchema",
    "EXCEPTION_HANDLER": "playpay.api.problems.problem_exception_handler",
    "DEFAULT_PAGINATION_CLASS": "playpay.api.pagination.StrictLimitOffsetPagination",
    "PAGE_SIZE": 100,
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "PlayPay API",
    "DESCRIPTION": (
        "Direct carrier billing for games. Authenticate with `Authorization: Api-Key <key>`. "
        "Errors are RFC 9457 problem+json documents. Request bodies are I-JSON (RFC 7493): a NUL character or "
        "a lone UTF-16 surrogate in any string or key, NaN or Infinity, or nesting deeper than the limit is "
        "answered 400 (`invalid_json_value`, `json_too_deep`); a body over the size limit 413."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # Every error is problem+json; 401/429 wherever the API key is required, 503 everywhere.
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "playpay.api.schema.document_problems",
    ],
    "ENUM_NAME_OVERRIDES": {
        "PaymentStatusEnum": "payments.models.PaymentStatus",
        "OperationStatusEnum": "payments.models.Refund.Status",
    },
}
# Default requests per minute per app; each App may override it.
API_RATE_LIMIT_PER_MINUTE = env_int("API_RATE_LIMIT_PER_MINUTE", 6000)
# PostgreSQL work_mem for the funnel's analytic statements (raw-event reports, rollup builds): their sorts
# and aggregates over millions of events stay in memory instead of spilling to disk.
FUNNEL_WORK_MEM = env_str("FUNNEL_WORK_MEM", "256MB")
# Funnel analysis and rollup statements may run longer than DATABASE_STATEMENT_TIMEOUT_MS allows a request.
FUNNEL_STATEMENT_TIMEOUT_MS = env_int("FUNNEL_STATEMENT_TIMEOUT_MS", 300_000)
# A raw funnel report over FUNNEL_PARTS_FROM_HOURS or more is cut into FUNNEL_PARTS parts by journey, read at
# once on connections of their own (one core each, in one snapshot). 1: one statement.
FUNNEL_PARTS = env_int("FUNNEL_PARTS", 2)
FUNNEL_PARTS_FROM_HOURS = env_int("FUNNEL_PARTS_FROM_HOURS", 24)
# A funnel report from raw events asked for in a web request (the admin's page) gives up after this, well
# inside the web server's 30 s worker timeout, and the page says so instead of dying.
FUNNEL_REPORT_TIMEOUT_MS = env_int("FUNNEL_REPORT_TIMEOUT_MS", 20_000)

# Analytics tier: where funnel reports are computed. "postgres" (the default) reads the main database
# (PostgreSQL, or SQLite in the embedded default); "clickhouse" reads ClickHouse at CLICKHOUSE_URL, which
# the `funnel: ship to ClickHouse` job fills. CLICKHOUSE_URL alone starts the shipping (reads stay put), so
# ClickHouse can catch up before reports switch: http(s)://user:password@host:8123 for a server, chdb:///path
# (or chdb://memory) for embedded ClickHouse (chdb), in tests and development; tables go in CLICKHOUSE_DATABASE.
ANALYTICS_BACKEND = env_str("ANALYTICS_BACKEND", "postgres").strip().lower()
CLICKHOUSE_URL = env_str("CLICKHOUSE_URL", "")
CLICKHOUSE_DATABASE = env_str("CLICKHOUSE_DATABASE", "playpay")
if ANALYTICS_BACKEND not in ("postgres", "clickhouse"):
    raise ImproperlyConfigured("ANALYTICS_BACKEND is postgres or clickhouse")
if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", CLICKHOUSE_DATABASE):
    raise ImproperlyConfigured("CLICKHOUSE_DATABASE is a plain identifier (letters, digits, _)")
if ANALYTICS_BACKEND == "clickhouse" and not CLICKHOUSE_URL:
    raise ImproperlyConfigured("ANALYTICS_BACKEND=clickhouse needs CLICKHOUSE_URL")
CLICKHOUSE_CONNECT_TIMEOUT = env_int("CLICKHOUSE_CONNECT_TIMEOUT", 5)
# Seconds a ClickHouse statement may run (the server stops it) and the client waits for its answer.
CLICKHOUSE_QUERY_TIMEOUT = env_int("CLICKHOUSE_QUERY_TIMEOUT", 60)
# Rows per shipped batch, and how old a row must be before it is shipped: a row is shipped once its
# transaction has surely committed, so that one committing late behind a later id is never skipped. Keep it
# above the longest transaction that writes funnel events, journeys or payments (statement plus idle timeouts).
ANALYTICS_BATCH_ROWS = env_int("ANALYTICS_BATCH_ROWS", 50_000)
ANALYTICS_SETTLE_SECONDS = env_int("ANALYTICS_SETTLE_SECONDS", 120)
# PostgreSQL work_mem for reporting statements (dashboard and catalog queries, payment rollup builds).
REPORTING_WORK_MEM = env_str("REPORTING_WORK_MEM", "64MB")
# A payment rollup build (the periodic job, or the first build over months of payments) may run longer than
# DATABASE_STATEMENT_TIMEOUT_MS allows a request; dashboard and catalog reads keep the request's limit.
REPORTING_ROLLUP_STATEMENT_TIMEOUT_MS = env_int("REPORTING_ROLLUP_STATEMENT_TIMEOUT_MS", 300_000)

# Public base URL of this deployment: carriers are given callback URLs under it.
PUBLIC_BASE_URL = env_str("PUBLIC_BASE_URL", "http://127.0.0.1:8000").rstrip("/")

# --- Sandbox (demo and test mode) -------------------------------------------
# PLAYPAY_ENV=production marks a production deployment: the sandbox must be off there.
PLAYPAY_ENV = env_str("PLAYPAY_ENV", "development").strip().lower()
if PLAYPAY_ENV not in {"development", "staging", "production"}:
    raise ImproperlyConfigured(f"PLAYPAY_ENV must be development, staging or production, got {PLAYPAY_ENV!r}")
# The sandbox app: test carriers (PIN 1234), carrier and reference-data simulators under /simulators/,
# seed_demo and demo_traffic. On by default with DEBUG (the embedded default; the tests turn it on).
# CARRIER_SIMULATORS is its former name, still read.
SANDBOX = env_bool("SANDBOX", env_bool("CARRIER_SIMULATORS", DEBUG and PLAYPAY_ENV != "production"))
if SANDBOX and PLAYPAY_ENV == "production":
    raise ImproperlyConfigured(
        "SANDBOX is on in a production deployment (PLAYPAY_ENV=production). The sandbox serves fake carriers "
        "and test carriers that approve any payment with PIN 1234; it must never run in production. "
        "Unset SANDBOX and CARRIER_SIMULATORS (or set them to false) in this deployment's environment; "
        "a demo or staging deployment that wants the sandbox sets PLAYPAY_ENV=staging instead."
    )
if SANDBOX:
    INSTALLED_APPS.append("sandbox")

# --- Payments ---------------------------------------------------------------
IDEMPOTENCY_KEY_TTL_HOURS = env_int("IDEMPOTENCY_KEY_TTL_HOURS", 48)
# A request that claimed a key and never finished (a killed process) stops blocking after this.
IDEMPOTENCY_IN_FLIGHT_TIMEOUT_SECONDS = env_int("IDEMPOTENCY_IN_FLIGHT_TIMEOUT_SECONDS", 60)
PIN_MAX_ATTEMPTS = env_int("PIN_MAX_ATTEMPTS", 3)
# A PIN confirm is checked on the carrier's queue, never in the request; the request waits for the verdict
# at most this long (then answers 202 with the check pending). 0: never waits.
PIN_CONFIRM_WAIT_MS = env_int("PIN_CONFIRM_WAIT_MS", 1000)
# Each waiting confirm holds a web thread: a long wait starves the web server when a carrier is slow.
PIN_CONFIRM_WAIT_MAX_MS = 5000
if not 0 <= PIN_CONFIRM_WAIT_MS <= PIN_CONFIRM_WAIT_MAX_MS:
    raise ImproperlyConfigured(
        f"PIN_CONFIRM_WAIT_MS must be between 0 and {PIN_CONFIRM_WAIT_MAX_MS} (milliseconds), got "
        f"{PIN_CONFIRM_WAIT_MS}: each PIN confirm waiting for the carrier queue's verdict holds a web thread "
        "that long, so a longer wait starves the web server while a carrier is slow. Apps poll the payment "
        "after a 202 instead."
    )
# A charge can be reversed (undone as a technical error) this long after it succeeded.
REVERSAL_WINDOW_HOURS = env_int("REVERSAL_WINDOW_HOURS", 72)
# Four-eyes: a staff refund above this amount (major units, per currency: "GBP=50,EUR=50,JPY=8000") waits for a
# second staff member's approval, as does every bulk refund. A currency not listed needs approval for any amount.
REFUND_APPROVAL_ABOVE = dict(
    item.split("=", 1)
    for item in env_list("REFUND_APPROVAL_ABOVE", ["GBP=50", "EUR=50", "USD=50", "JPY=8000", "KWD=15"])
    if "=" in item
)
# Carrier routing, price points and API keys are memoised per process for this long; a change
# (a carrier switched off, a key revoked) takes effect everywhere within it. 0: no memo.
REFERENCE_CACHE_SECONDS = env_int("REFERENCE_CACHE_SECONDS", 5)
PIN_TTL_SECONDS = env_int("PIN_TTL_SECONDS", 300)
# An unknown carrier outcome (charge, refund, reversal) is first checked this long after the call, then
# again after twice as long each time, up to OUTCOME_RESOLVE_MAX_INTERVAL_SECONDS between checks; one still
# unknown after OUTCOME_ALERT_AFTER_MINUTES is logged as an error, once (docs/operations.md).
OUTCOME_RESOLVE_AFTER_SECONDS = env_int("OUTCOME_RESOLVE_AFTER_SECONDS", 30)
OUTCOME_RESOLVE_MAX_INTERVAL_SECONDS = env_int("OUTCOME_RESOLVE_MAX_INTERVAL_SECONDS", 3600)
OUTCOME_ALERT_AFTER_MINUTES = env_int("OUTCOME_ALERT_AFTER_MINUTES", 60)

# --- Subscriptions ----------------------------------------------------------
# A renewal declined for want of balance (or a spending limit) is tried again once a day from the period's
# start, this many days at most; then the subscription expires.
SUBSCRIPTION_RETRY_DAYS = env_int("SUBSCRIPTION_RETRY_DAYS", 7)
# Days from the period's start during which a player whose renewal failed stays entitled (past_due); then
# the subscription is suspended until a retry succeeds.
SUBSCRIPTION_GRACE_DAYS = env_int("SUBSCRIPTION_GRACE_DAYS", 3)
# Hours before a monthly plan's renewal that the app is sent `subscription.reminder` (to tell the player);
# 0: none. Daily and weekly plans have no reminder.
SUBSCRIPTION_REMINDER_HOURS = env_int("SUBSCRIPTION_REMINDER_HOURS", 48)
# A reminder whose time passed while the renewal engine was stopped is sent late only while the renewal is at
# least this many hours ahead (at most half SUBSCRIPTION_REMINDER_HOURS); closer, it is recorded as skipped.
SUBSCRIPTION_REMINDER_MIN_HOURS = env_int("SUBSCRIPTION_REMINDER_MIN_HOURS", 24)
# Subscriptions the renewal engine locks and charges per transaction.
SUBSCRIPTION_RENEWAL_BATCH = env_int("SUBSCRIPTION_RENEWAL_BATCH", 200)
# Renewals found due together reach each carrier spread over this many seconds, each at a random moment in it
# (jitter), and, when there are many, paced at SUBSCRIPTION_RENEWAL_RATE_PERCENT of the carrier's rate limit
# (the rest is left to one-off payments). The player stays entitled until theirs is sent and answered (5 minutes
# after its moment). 0: all sent at once.
SUBSCRIPTION_RENEWAL_SPREAD_SECONDS = env_int("SUBSCRIPTION_RENEWAL_SPREAD_SECONDS", 300)
SUBSCRIPTION_RENEWAL_RATE_PERCENT = env_int("SUBSCRIPTION_RENEWAL_RATE_PERCENT", 50)
if SUBSCRIPTION_RENEWAL_SPREAD_SECONDS < 0 or not 1 <= SUBSCRIPTION_RENEWAL_RATE_PERCENT <= 100:
    raise ImproperlyConfigured(
        "SUBSCRIPTION_RENEWAL_SPREAD_SECONDS must be 0 or more and SUBSCRIPTION_RENEWAL_RATE_PERCENT 1 to 100"
    )
# A carrier that manages renewals (the aggregator) that has not told of a period this many minutes after the
# period's end is asked about the subscription; asked again as long after each answer with nothing new.
SUBSCRIPTION_CARRIER_OVERDUE_MINUTES = env_int("SUBSCRIPTION_CARRIER_OVERDUE_MINUTES", 360)
if not 0 <= SUBSCRIPTION_GRACE_DAYS <= SUBSCRIPTION_RETRY_DAYS:
    raise ImproperlyConfigured(
        f"SUBSCRIPTION_GRACE_DAYS ({SUBSCRIPTION_GRACE_DAYS}) must be between 0 and SUBSCRIPTION_RETRY_DAYS "
        f"({SUBSCRIPTION_RETRY_DAYS}): the grace period ends at one of the daily retries."
    )

# Secrets for carrier credentials and webhook signing secrets at rest (playpay.crypto, Fernet), comma-separated,
# newest first: values are encrypted under the first and decrypted under any, so a key can be rotated
# (`manage.py rotate_encryption_keys`, docs/operations.md). Derived from SECRET_KEY when unset, outside production.
CARRIER_CREDENTIALS_KEY = env_str("CARRIER_CREDENTIALS_KEY", "")

# A production deployment names its own secrets: a forgotten SECRET_KEY would sign sessions with the public
# fallback above, and a credentials key derived from SECRET_KEY would make the stored secrets unreadable the
# day SECRET_KEY is rotated.
if PLAYPAY_ENV == "production":
    _missing = [name for name in ("SECRET_KEY", "CARRIER_CREDENTIALS_KEY") if not env_str(name, "").strip()]
    if _missing:
        raise ImproperlyConfigured(
            f"{' and '.join(_missing)} must be set in a production deployment (PLAYPAY_ENV=production). "
            "SECRET_KEY signs sessions and tokens; CARRIER_CREDENTIALS_KEY encrypts carrier credentials and "
            "webhook signing secrets at rest (comma-separated, newest first). Give each a long random value, "
            "e.g. `python -c 'import secrets; print(secrets.token_urlsafe(50))'`. A deployment whose stored "
            "secrets were encrypted under the key derived from SECRET_KEY sets "
            "CARRIER_CREDENTIALS_KEY=<new key>,<its SECRET_KEY> and runs `manage.py rotate_encryption_keys` "
            '(docs/operations.md, "Encryption keys").'
        )

# --- Logs and metrics (docs/operations.md, "Logs" and "Metrics") -------------------------------
# JSON lines in production; plain text for reading in a terminal (the default when DEBUG).
LOG_FORMAT = env_str("LOG_FORMAT", "text" if DEBUG else "json")
if LOG_FORMAT not in ("json", "text"):
    raise ImproperlyConfigured(f"LOG_FORMAT must be json or text, got {LOG_FORMAT!r}")
# Secrets removed and phone numbers masked by the same rules as the journal (playpay.redaction).
LOGGING = logging_config(log_format=LOG_FORMAT, level=env_str("LOG_LEVEL", "INFO"), redact="playpay.redaction.redact")
# Celery workers log through the same LOGGING instead of Celery's own root handler.
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# Bearer token for /metrics; without one the endpoint answers 404.
METRICS_TOKEN = env_str("METRICS_TOKEN", "")
