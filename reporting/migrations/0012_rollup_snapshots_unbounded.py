"""The rollups' states keep PostgreSQL's snapshot as text of any length: a snapshot lists every transaction in
progress when it was taken, with many of them it could outgrow the 10,000 characters allowed so far."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("reporting", "0011_carrier_call_rollups"),
    ]

    operations = [
        migrations.AlterField(
            model_name="carriercallrollupstate",
            name="checked_snapshot",
            field=models.TextField(blank=True),
        ),
        migrations.AlterField(
            model_name="rollupstate",
            name="checked_snapshot",
            field=models.TextField(blank=True),
        ),
    ]
