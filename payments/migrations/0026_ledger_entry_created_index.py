# The ledger entries newest first, and by a created date-time range, in the admin at millions of entries.
#
# A plain CREATE INDEX on the partitioned table: ledger writes (payments settling) wait while it is built, about
# 4 s at 8.8 M entries on the 2-core development machine; on a much larger ledger, migrate in a quiet hour.

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("payments", "0025_player_blocks"),
    ]

    operations = [
        migrations.AddIndex(
            model_name="ledgerentry",
            index=models.Index(fields=["created_at", "id"], name="ledger_entry_created_idx"),
        ),
    ]
