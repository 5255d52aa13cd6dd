"""Fill the ledger figures payments keep (0028) from their ledger lines, RECOUNT_PAYMENTS payments per
transaction, beside the payments' own work (`payments.services.ledger.recount_payment_figures`).

Non-atomic, so that ten million payments are not one transaction: interrupted, it runs again from the start,
and payments already counted are read but not written again. `manage.py recount_payment_figures` does the same
for any period, e.g. after a rolling deploy in which workers of the previous release posted entries.

It runs today's recount, not a copy frozen with this migration: should a later release rename the figures or
the ledger's columns, a database that skips releases must run this one's migrations with this one's code.
"""

from typing import Any

from django.db import migrations


def count_figures(apps: Any, schema_editor: Any) -> None:
    from payments.services.ledger import recount_payment_figures  # the one recount, as run later

    recount_payment_figures()


class Migration(migrations.Migration):
    atomic = False

    dependencies = [("payments", "0028_payment_ledger_figures")]

    operations = [migrations.RunPython(count_figures, migrations.RunPython.noop, elidable=True)]
