"""Subscriber counts (reporting.services.subscriber_counts): the tables, and on PostgreSQL the subscriptions
table's triggers that write every change of the counts, installed with the counts of the subscriptions there are;
the periodic fold.
"""

from typing import Any

import django.db.models.deletion
import django.db.models.functions.datetime
from django.db import migrations, models

from playpay.beat import Entry, schedule, unschedule

ENTRIES: list[Entry] = [("reporting: fold subscriber counts", "reporting.tasks.fold_subscriber_counts", 1, "minutes")]

# The triggers, and the functions they run (the migration installs them and fills the counts in one transaction).
# A change row's `at` is now(): the start of the transaction that made it, on the database's clock.
GRAIN = "app_id, carrier_id, plan_id, status"
TRIGGERS = f"""
CREATE FUNCTION reporting_subscription_count_entered() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO reporting_subscriptioncountchange ({GRAIN}, change, at)
    SELECT {GRAIN}, COUNT(*), now() FROM new_rows GROUP BY {GRAIN};
    RETURN NULL;
END $$;
CREATE FUNCTION reporting_subscription_count_left() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO reporting_subscriptioncountchange ({GRAIN}, change, at)
    SELECT {GRAIN}, -COUNT(*), now() FROM old_rows GROUP BY {GRAIN};
    RETURN NULL;
END $$;
CREATE FUNCTION reporting_subscription_count_moved() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO reporting_subscriptioncountchange ({GRAIN}, change, at) VALUES
        (OLD.app_id, OLD.carrier_id, OLD.plan_id, OLD.status, -1, now()),
        (NEW.app_id, NEW.carrier_id, NEW.plan_id, NEW.status, 1, now());
    RETURN NULL;
END $$;
CREATE FUNCTION reporting_subscription_count_reset() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- The counts' lock first, as the fold takes it: the two never wait on each other crosswise.
    LOCK TABLE reporting_subscriptioncount IN SHARE ROW EXCLUSIVE MODE;
    DELETE FROM reporting_subscriptioncountchange;
    DELETE FROM reporting_subscriptioncount;
    RETURN NULL;
END $$;
CREATE TRIGGER subscription_count_insert AFTER INSERT ON subscriptions_subscription
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION reporting_subscription_count_entered();
CREATE TRIGGER subscription_count_delete AFTER DELETE ON subscriptions_subscription
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION reporting_subscription_count_left();
CREATE TRIGGER subscription_count_update AFTER UPDATE OF {GRAIN} ON subscriptions_subscription
    FOR EACH ROW WHEN (
        OLD.status IS DISTINCT FROM NEW.status OR OLD.app_id IS DISTINCT FROM NEW.app_id
        OR OLD.carrier_id IS DISTINCT FROM NEW.carrier_id OR OLD.plan_id IS DISTINCT FROM NEW.plan_id
    ) EXECUTE FUNCTION reporting_subscription_count_moved();
CREATE TRIGGER subscription_count_truncate AFTER TRUNCATE ON subscriptions_subscription
    FOR EACH STATEMENT EXECUTE FUNCTION reporting_subscription_count_reset();
"""
DROP_TRIGGERS = """
DROP TRIGGER subscription_count_insert ON subscriptions_subscription;
DROP TRIGGER subscription_count_delete ON subscriptions_subscription;
DROP TRIGGER subscription_count_update ON subscriptions_subscription;
DROP TRIGGER subscription_count_truncate ON subscriptions_subscription;
DROP FUNCTION reporting_subscription_count_entered();
DROP FUNCTION reporting_subscription_count_left();
DROP FUNCTION reporting_subscription_count_moved();
DROP FUNCTION reporting_subscription_count_reset();
"""
# The counts of the subscriptions there are, in the transaction that installs the triggers: CREATE TRIGGER holds
# a lock that keeps writers out until it commits, so no change falls between the two.
COUNT_ALL = (
    f"INSERT INTO reporting_subscriptioncount ({GRAIN}, subscriptions) "
    f"SELECT {GRAIN}, COUNT(*) FROM subscriptions_subscription GROUP BY {GRAIN}"
)


def install(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        with schema_editor.connection.cursor() as cursor:
            cursor.execute(TRIGGERS)
            cursor.execute(COUNT_ALL)
    schedule(apps, ENTRIES)


def uninstall(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        with schema_editor.connection.cursor() as cursor:
            cursor.execute(DROP_TRIGGERS)
    unschedule(apps, ENTRIES)


class Migration(migrations.Migration):
    dependencies = [
        ("carriers", "0009_carrier_downgrade_billing"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
        ("reporting", "0017_seed_subscription_datasets"),
        ("subscriptions", "0012_carrier_cancel_retries"),
        ("tenants", "0002_configuration_history"),
    ]

    operations = [
        migrations.CreateModel(
            name="SubscriptionCountChange",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("status", models.CharField(max_length=16)),
                ("change", models.BigIntegerField()),
                ("at", models.DateTimeField(db_default=django.db.models.functions.datetime.Now())),
                (
                    "app",
                    models.ForeignKey(
                        db_constraint=False,
                        db_index=False,
                        on_delete=django.db.models.deletion.DO_NOTHING,
                        related_name="+",
                        to="tenants.app",
                    ),
                ),
                (
                    "carrier",
                    models.ForeignKey(
                        db_constraint=False,
                        db_index=False,
                        on_delete=django.db.models.deletion.DO_NOTHING,
                        related_name="+",
                        to="carriers.carrier",
                    ),
                ),
                (
                    "plan",
                    models.ForeignKey(
                        db_constraint=False,
                        db_index=False,
                        on_delete=django.db.models.deletion.DO_NOTHING,
                        related_name="+",
                        to="subscriptions.plan",
                    ),
                ),
            ],
            options={
                "abstract": False,
            },
        ),
        migrations.CreateModel(
            name="SubscriptionCount",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("status", models.CharField(max_length=16)),
                ("subscriptions", models.BigIntegerField()),
                (
                    "app",
                    models.ForeignKey(
                        db_constraint=False,
                        db_index=False,
                        on_delete=django.db.models.deletion.DO_NOTHING,
                        related_name="+",
                        to="tenants.app",
                    ),
                ),
                (
                    "carrier",
                    models.ForeignKey(
                        db_constraint=False,
                        db_index=False,
                        on_delete=django.db.models.deletion.DO_NOTHING,
                        related_name="+",
                        to="carriers.carrier",
                    ),
                ),
                (
                    "plan",
                    models.ForeignKey(
                        db_constraint=False,
                        db_index=False,
                        on_delete=django.db.models.deletion.DO_NOTHING,
                        related_name="+",
                        to="subscriptions.plan",
                    ),
                ),
            ],
            options={
                "constraints": [
                    models.UniqueConstraint(
                        fields=("app", "carrier", "plan", "status"), name="subscription_count_unique"
                    )
                ],
            },
        ),
        migrations.CreateModel(
            name="SubscriberDayCount",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("status", models.CharField(max_length=16)),
                ("day", models.DateTimeField()),
                ("subscriptions", models.BigIntegerField()),
                (
                    "app",
                    models.ForeignKey(
                        db_constraint=False,
                        db_index=False,
                        on_delete=django.db.models.deletion.DO_NOTHING,
                        related_name="+",
                        to="tenants.app",
                    ),
                ),
                (
                    "carrier",
                    models.ForeignKey(
                        db_constraint=False,
                        db_index=False,
                        on_delete=django.db.models.deletion.DO_NOTHING,
                        related_name="+",
                        to="carriers.carrier",
                    ),
                ),
                (
                    "plan",
                    models.ForeignKey(
                        db_constraint=False,
                        db_index=False,
                        on_delete=django.db.models.deletion.DO_NOTHING,
                        related_name="+",
                        to="subscriptions.plan",
                    ),
                ),
            ],
            options={
                "indexes": [models.Index(fields=["day"], name="subscriber_day_idx")],
                "constraints": [
                    models.UniqueConstraint(
                        fields=("day", "app", "carrier", "plan", "status"),
                        name="subscriber_day_count_unique",
                    )
                ],
            },
        ),
        migrations.CreateModel(
            name="SubscriberCountState",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("first_day", models.DateTimeField()),
                ("next_day", models.DateTimeField()),
            ],
        ),
        migrations.RunPython(install, uninstall),
    ]
