"""Seeds the data catalog (the SQL and journal datasets the dashboard reads), the overview
dashboard, a carrier success-rate alert, the staff roles' rights and the periodic jobs.

API datasets point at a deployment's own providers (an FX-rate service, an aggregator's balance):
staff add them in the admin, and the sandbox's `seed_demo` adds demo ones against its simulators.
Earlier versions of this migration seeded those two against the simulators; 0005 removes them."""

from typing import Any

from django.contrib.auth.management import create_permissions
from django.db import migrations

from playpay.beat import Entry, schedule, unschedule

BEAT: list[Entry] = [
    ("reporting: refresh API datasets", "reporting.tasks.refresh_api_datasets", 1, "minutes"),
    ("reporting: evaluate alerts", "reporting.tasks.evaluate_alerts", 1, "minutes"),
]

D, M = "dimension", "measure"
# slug: (name, description, kind, source, time field, fields)
# field: (name, role, source, data type, unit, aggregation, label)
DATASETS: dict[str, Any] = {
    "payments": (
        "Payments",
        "Every payment, by the time it was created: revenue (charged amounts, gross of refunds), counts, "
        "success rate (charged among decided payments), failure codes.",
        "sql",
        "payments",
        "created_at",
        [
            ("app", D, "", "string", "", "", "app"),
            ("carrier", D, "", "string", "", "", "carrier"),
            ("country", D, "", "string", "", "", "country"),
            ("currency", D, "", "string", "", "", "currency"),
            ("status", D, "", "string", "", "", "status"),
            ("flow", D, "", "string", "", "", "flow"),
            ("price_point", D, "", "string", "", "", "price point"),
            ("failure_code", D, "", "string", "", "", "failure code"),
            ("payments", M, "", "integer", "", "count", "payments"),
            ("charged_payments", M, "charged", "integer", "", "sum", "charged payments"),
            ("failed_payments", M, "failed", "integer", "", "sum", "failed or expired payments"),
            ("revenue_minor", M, "charged_amount_minor", "money", "", "sum", "revenue"),
            ("success_rate", M, "charge_succeeded", "ratio", "", "avg", "success rate"),
            ("average_amount_minor", M, "charged_amount_minor", "money", "", "avg", "average charge"),
            ("players", M, "player", "integer", "", "count_distinct", "distinct players"),
        ],
    ),
    "refunds": (
        "Refunds",
        "Refunds requested by apps and staff, by the time they were requested.",
        "sql",
        "refunds",
        "created_at",
        [
            ("app", D, "", "string", "", "", "app"),
            ("carrier", D, "", "string", "", "", "carrier"),
            ("country", D, "", "string", "", "", "country"),
            ("currency", D, "", "string", "", "", "currency"),
            ("status", D, "", "string", "", "", "status"),
            ("refunds", M, "", "integer", "", "count", "refunds"),
            ("amount_minor", M, "amount_minor", "money", "", "sum", "refunded amount"),
        ],
    ),
    "reversals": (
        "Reversals",
        "Reversals of whole charges, by the time they were requested.",
        "sql",
        "reversals",
        "created_at",
        [
            ("app", D, "", "string", "", "", "app"),
            ("carrier", D, "", "string", "", "", "carrier"),
            ("country", D, "", "string", "", "", "country"),
            ("currency", D, "", "string", "", "", "currency"),
            ("status", D, "", "string", "", "", "status"),
            ("reversals", M, "", "integer", "", "count", "reversals"),
            ("amount_minor", M, "amount_minor", "money", "", "sum", "reversed amount"),
        ],
    ),
    "ledger-lines": (
        "Ledger lines",
        "Double-entry ledger lines (debit positive, credit negative) by account.",
        "sql",
        "ledger_lines",
        "created_at",
        [
            ("account", D, "", "string", "", "", "account"),
            ("entry_kind", D, "", "string", "", "", "entry kind"),
            ("carrier", D, "", "string", "", "", "carrier"),
            ("app", D, "", "string", "", "", "app"),
            ("country", D, "", "string", "", "", "country"),
            ("currency", D, "", "string", "", "", "currency"),
            ("lines", M, "", "integer", "", "count", "lines"),
            ("balance_minor", M, "amount_minor", "money", "", "sum", "balance"),
        ],
    ),
    "funnel-rollups": (
        "Funnel rollups",
        "Journeys that reached each step of a funnel (step_1 entered), per hour of journey start.",
        "sql",
        "funnel_rollups",
        "hour",
        [
            ("funnel", D, "", "string", "", "", "funnel"),
            ("app", D, "", "string", "", "", "app"),
            ("carrier", D, "", "string", "", "", "carrier"),
            ("country", D, "", "string", "", "", "country"),
            ("flow", D, "", "string", "", "", "flow"),
            *((f"step_{n}", M, f"step_{n}", "integer", "journeys", "sum", f"step {n}") for n in range(1, 11)),
        ],
    ),
    "carrier-calls": (
        "Carrier calls",
        "Every call to a carrier, from the interaction journal: outcome, error code and latency.",
        "journal",
        "carrier_calls",
        "occurred_at",
        [
            ("carrier", D, "", "string", "", "", "carrier"),
            ("operation", D, "", "string", "", "", "operation"),
            ("outcome", D, "", "string", "", "", "outcome"),
            ("error_code", D, "", "string", "", "", "error code"),
            ("calls", M, "", "integer", "", "count", "calls"),
            ("failed_calls", M, "failed", "integer", "", "sum", "failed calls"),
            ("transport_failures", M, "transport_failed", "integer", "", "sum", "transport failures"),
            ("avg_latency_ms", M, "latency_ms", "decimal", "ms", "avg", "average latency"),
            ("max_latency_ms", M, "latency_ms", "integer", "ms", "max", "max latency"),
        ],
    ),
}

GRANTS = {
    "operations": [
        "view_dataset",
        "view_dashboard",
        "view_alertrule",
        "add_alertrule",
        "change_alertrule",
        "view_alertevent",
    ],
    "finance": [
        "view_dataset",
        "add_dataset",
        "change_dataset",
        "add_datasetfield",
        "change_datasetfield",
        "delete_datasetfield",
        "view_datasetfield",
        "view_dashboard",
        "view_alertrule",
        "view_alertevent",
    ],
    "support": ["view_dataset", "view_alertevent"],
}


def seed_datasets(dataset_model: Any, field_model: Any, datasets: dict[str, Any] | None = None) -> None:
    """Create the catalog's datasets (`DATASETS`, or those given) that do not exist yet (later migrations and
    tests call it too, with the real models)."""
    for slug, (name, description, kind, source, time_field, fields) in (datasets or DATASETS).items():
        dataset, created = dataset_model.objects.get_or_create(
            slug=slug,
            defaults={
                "name": name,
                "description": description,
                "source_kind": kind,
                "source": source,
                "time_field": time_field,
            },
        )
        if not created:
            continue
        field_model.objects.bulk_create(
            field_model(
                dataset=dataset,
                name=field_name,
                role=role,
                source=field_source if field_source != field_name else "",
                data_type=data_type,
                unit=unit,
                aggregation=aggregation,
                label=label,
            )
            for field_name, role, field_source, data_type, unit, aggregation, label in fields
        )


def seed(apps: Any, schema_editor: Any) -> None:
    app_config = apps.get_app_config("reporting")
    app_config.models_module = True
    create_permissions(app_config, apps=apps, verbosity=0)
    app_config.models_module = None
    group_model = apps.get_model("auth", "Group")
    permission_model = apps.get_model("auth", "Permission")
    for role, codenames in GRANTS.items():
        group, _ = group_model.objects.get_or_create(name=role)
        group.permissions.add(
            *permission_model.objects.filter(content_type__app_label="reporting", codename__in=codenames)
        )

    dataset_model = apps.get_model("reporting", "Dataset")
    seed_datasets(dataset_model, apps.get_model("reporting", "DatasetField"))
    dashboard_model = apps.get_model("reporting", "Dashboard")
    dashboard, _ = dashboard_model.objects.get_or_create(
        slug="overview", defaults={"title": "Overview", "currency": "EUR", "refresh_seconds": 5}
    )
    dashboard.groups.add(*group_model.objects.filter(name__in=["operations", "finance"]))

    rule_model = apps.get_model("reporting", "AlertRule")
    rule_model.objects.get_or_create(
        name="Carrier success rate under 80%",
        defaults={
            "dataset": dataset_model.objects.get(slug="payments"),
            "measure": "success_rate",
            "group_by": "carrier",
            "comparison": "lt",
            "threshold": "0.8",
            "window_minutes": 15,
            "min_rows": 10,
        },
    )
    schedule(apps, BEAT)


def unseed(apps: Any, schema_editor: Any) -> None:
    unschedule(apps, BEAT)
    apps.get_model("reporting", "AlertRule").objects.filter(name="Carrier success rate under 80%").delete()
    apps.get_model("reporting", "Dashboard").objects.filter(slug="overview").delete()
    apps.get_model("reporting", "Dataset").objects.filter(slug__in=list(DATASETS)).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("reporting", "0003_data_catalog_dashboards_alerts"),
        ("reporting", "0002_finance_roles"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]
    operations = [migrations.RunPython(seed, unseed)]
