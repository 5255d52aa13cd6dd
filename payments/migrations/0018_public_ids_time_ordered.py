"""New public ids of payments and refunds are UUIDv7 (time-ordered); existing ones are kept."""

from django.db import migrations, models

import playpay.ids


class Migration(migrations.Migration):
    dependencies = [
        ("payments", "0017_pin_checked_on_carrier_queue"),
    ]

    operations = [
        migrations.AlterField(
            model_name="payment",
            name="public_id",
            field=models.UUIDField(default=playpay.ids.new_public_id, editable=False, unique=True),
        ),
        migrations.AlterField(
            model_name="refund",
            name="public_id",
            field=models.UUIDField(default=playpay.ids.new_public_id, editable=False, unique=True),
        ),
    ]
