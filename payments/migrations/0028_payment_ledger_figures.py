"""The ledger figures a payment keeps (payments.figures); 0029 fills them.

On PostgreSQL the sums also get 0 as the database's default: during a rolling deploy, workers of the previous
release insert payments without these columns, which would otherwise be refused (NOT NULL). Their entries'
figures are not added: `manage.py recount_payment_figures` mends them once the deploy is over.
"""

from typing import Any

from django.db import migrations, models

SUMS = (
    "gross_minor",
    "tax_minor",
    "carrier_share_minor",
    "platform_revenue_minor",
    "app_payable_minor",
    "net_minor",
    "paid_back_minor",
)


def default_to_zero(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        for column in SUMS:
            schema_editor.execute(f"ALTER TABLE payments_payment ALTER COLUMN {column} SET DEFAULT 0")


class Migration(migrations.Migration):
    dependencies = [
        ("payments", "0027_payment_paced_index"),
    ]

    operations = [
        migrations.AddField(
            model_name="payment",
            name="app_payable_minor",
            field=models.BigIntegerField(default=0, editable=False),
        ),
        migrations.AddField(
            model_name="payment",
            name="carrier_share_minor",
            field=models.BigIntegerField(default=0, editable=False),
        ),
        migrations.AddField(
            model_name="payment",
            name="charged_at",
            field=models.DateTimeField(blank=True, editable=False, null=True),
        ),
        migrations.AddField(
            model_name="payment",
            name="gross_minor",
            field=models.BigIntegerField(default=0, editable=False),
        ),
        migrations.AddField(
            model_name="payment",
            name="net_minor",
            field=models.BigIntegerField(default=0, editable=False),
        ),
        migrations.AddField(
            model_name="payment",
            name="paid_back_minor",
            field=models.BigIntegerField(default=0, editable=False),
        ),
        migrations.AddField(
            model_name="payment",
            name="platform_revenue_minor",
            field=models.BigIntegerField(default=0, editable=False),
        ),
        migrations.AddField(
            model_name="payment",
            name="refunded_at",
            field=models.DateTimeField(blank=True, editable=False, help_text="Its last refund's posting.", null=True),
        ),
        migrations.AddField(
            model_name="payment",
            name="reversed_at",
            field=models.DateTimeField(blank=True, editable=False, null=True),
        ),
        migrations.AddField(
            model_name="payment",
            name="tax_minor",
            field=models.BigIntegerField(default=0, editable=False),
        ),
        migrations.RunPython(default_to_zero, migrations.RunPython.noop),
    ]
