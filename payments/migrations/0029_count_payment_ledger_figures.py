"""Fill the ledger figures payments keep (0028) from their ledger lines, a month of payments per transaction.

Non-atomic, so that ten million payments are not one transaction: interrupted, it runs again from the start,
and a month already counted is read but not written again. `manage.py recount_payment_figures` does the same
for any period, e.g. after a rolling deploy in which workers of the previous release posted entries.
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
