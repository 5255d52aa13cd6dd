"""Funnel events built for volume.

Everywhere: event ids are de-duplicated by a key table (`funnel_funneleventkey`, primary key
(app_id, event_id)) instead of a unique constraint on the events table; the existing events' ids are
copied into it. The events table loses its app_id index ((app_id, journey_id, occurred_at) leads
with it) and its foreign-key constraint (a check per inserted row; Django still protects the app).

On PostgreSQL only: `funnel_funnelevent` becomes a table partitioned by RANGE (occurred_at), one
partition per month (the months holding events, this month and the next three) plus a DEFAULT
partition; its rows are copied over. Its primary key is (id, occurred_at), as a partitioned table's
must include the partition key; its indexes keep the names Django knows them by.
"""

from django.db import migrations, models

from funnel.partitions import (
    DEFAULT_PARTITION,
    MONTHS_AHEAD,
    TABLE,
    add_months,
    create_partition,
    month_start,
)

PLAIN = f"{TABLE}_unpartitioned"
INDEXES = [
    ("funnel_funn_app_id_4b199a_idx", "(app_id, journey_id, occurred_at)"),
    ("funnel_funn_step_ba140b_idx", "(step, occurred_at)"),
]


def copy_keys(apps, schema_editor):
    schema_editor.execute(
        "INSERT INTO funnel_funneleventkey (app_id, event_id) SELECT app_id, event_id FROM funnel_funnelevent"
    )


def _set_aside(cursor):
    """Rename the table, its primary key and indexes out of the way of the new table's."""
    cursor.execute(f"ALTER TABLE {TABLE} RENAME TO {PLAIN}")
    cursor.execute(f"ALTER TABLE {PLAIN} RENAME CONSTRAINT {TABLE}_pkey TO {PLAIN}_pkey")
    for name, _ in INDEXES:
        cursor.execute(f"ALTER INDEX {name} RENAME TO {name}_old")


def _drop_set_aside(cursor):
    cursor.execute(f"DROP TABLE {PLAIN}")
    # The new identity's sequence takes the usual name and carries on after the copied ids.
    cursor.execute(f"SELECT pg_get_serial_sequence('{TABLE}', 'id')")
    sequence = cursor.fetchone()[0]
    if sequence != f"public.{TABLE}_id_seq":
        cursor.execute(f"ALTER SEQUENCE {sequence} RENAME TO {TABLE}_id_seq")
    cursor.execute(f"SELECT setval('{TABLE}_id_seq', coalesce(max(id), 0) + 1, false) FROM {TABLE}")


def partition(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    from django.utils import timezone

    with schema_editor.connection.cursor() as cursor:
        _set_aside(cursor)
        cursor.execute(
            f"CREATE TABLE {TABLE} (LIKE {PLAIN} INCLUDING DEFAULTS INCLUDING IDENTITY) PARTITION BY RANGE (occurred_at)"
        )
        cursor.execute(f"ALTER TABLE {TABLE} ADD CONSTRAINT {TABLE}_pkey PRIMARY KEY (id, occurred_at)")
        for name, columns in INDEXES:
            cursor.execute(f"CREATE INDEX {name} ON {TABLE} {columns}")
        cursor.execute(f"CREATE TABLE {DEFAULT_PARTITION} PARTITION OF {TABLE} DEFAULT")
        this_month = month_start(timezone.now())
        cursor.execute(
            f"SELECT DISTINCT date_trunc('month', occurred_at AT TIME ZONE 'UTC')::date FROM {PLAIN} "
            "WHERE occurred_at >= %s",
            [add_months(this_month, -24)],
        )
        months = {row[0] for row in cursor.fetchall()} | {add_months(this_month, n) for n in range(MONTHS_AHEAD + 1)}
        for month in sorted(months):
            create_partition(cursor, month)
        cursor.execute(f"INSERT INTO {TABLE} OVERRIDING SYSTEM VALUE SELECT * FROM {PLAIN}")
        _drop_set_aside(cursor)


def unpartition(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        _set_aside(cursor)
        cursor.execute(f"CREATE TABLE {TABLE} (LIKE {PLAIN} INCLUDING DEFAULTS INCLUDING IDENTITY)")
        cursor.execute(f"INSERT INTO {TABLE} OVERRIDING SYSTEM VALUE SELECT * FROM {PLAIN}")
        cursor.execute(f"ALTER TABLE {TABLE} ADD CONSTRAINT {TABLE}_pkey PRIMARY KEY (id)")
        for name, columns in INDEXES:
            cursor.execute(f"CREATE INDEX {name} ON {TABLE} {columns}")
        _drop_set_aside(cursor)


class Migration(migrations.Migration):
    dependencies = [
        ("funnel", "0004_schedule_rollups"),
        ("payments", "0011_reversal_requested_by_help"),
    ]

    operations = [
        migrations.CreateModel(
            name="FunnelEventKey",
            fields=[
                (
                    "pk",
                    models.CompositePrimaryKey(
                        "app_id", "event_id", blank=True, editable=False, primary_key=True, serialize=False
                    ),
                ),
                (
                    "app",
                    models.ForeignKey(
                        db_constraint=False,
                        db_index=False,
                        on_delete=models.deletion.PROTECT,
                        related_name="+",
                        to="payments.app",
                    ),
                ),
                ("event_id", models.CharField(max_length=160)),
            ],
        ),
        migrations.RunPython(copy_keys, migrations.RunPython.noop),
        migrations.RemoveConstraint(model_name="funnelevent", name="funnel_event_unique_per_app"),
        migrations.AlterField(
            model_name="funnelevent",
            name="app",
            field=models.ForeignKey(
                db_constraint=False,
                db_index=False,
                on_delete=models.deletion.PROTECT,
                related_name="funnel_events",
                to="payments.app",
            ),
        ),
        migrations.RunPython(partition, unpartition),
    ]
