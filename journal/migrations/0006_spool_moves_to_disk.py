"""The spool leaves the main database (it is now files on each host's disk, journal.spool): the records still
in the old table are shipped to the journal store first, so that none is lost with the table."""

from typing import Any

from django.db import migrations, transaction

BATCH = 500


def ship_spooled_records(apps: Any, schema_editor: Any) -> None:
    from django.conf import settings

    from journal.store import journal_store

    spooled = apps.get_model("journal", "JournalSpool").objects.using(schema_editor.connection.alias)
    while rows := list(spooled.order_by("id")[:BATCH]):
        try:
            if settings.JOURNAL_BACKEND == "sql":
                with transaction.atomic(using="journal"):
                    journal_store().write([row.document for row in rows])
            else:
                journal_store().write([row.document for row in rows])
        except Exception as exc:
            raise RuntimeError(
                f"{spooled.count()} journal records wait in the old spool table and the journal store refused "
                f"them ({exc}); run this migration again once the journal store answers"
            ) from exc
        spooled.filter(pk__in=[row.pk for row in rows]).delete()


class Migration(migrations.Migration):
    # Not one transaction: each batch's delete commits right after the store took it, so that a run stopped by
    # a refusing store and run again ships no batch twice.
    atomic = False
    dependencies = [("journal", "0005_journal_refuses_truncate")]
    operations = [
        migrations.RunPython(ship_spooled_records, migrations.RunPython.noop),
        migrations.DeleteModel(name="JournalSpool"),
    ]
