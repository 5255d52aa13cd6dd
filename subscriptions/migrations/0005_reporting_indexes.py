"""Indexes for reporting: subscribers per status and carrier, and the charges and status changes of a period."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("subscriptions", "0004_staff_permissions_subscriptions")]

    operations = [
        migrations.AddIndex(
            model_name="subscription",
            index=models.Index(fields=["status", "carrier"], name="subscr_status_carrier_idx"),
        ),
        migrations.AddIndex(
            model_name="subscriptioncharge",
            index=models.Index(fields=["created_at"], name="subscr_charge_created_idx"),
        ),
        migrations.AddIndex(
            model_name="subscriptionstatuschange",
            index=models.Index(fields=["created_at"], name="subscr_change_created_idx"),
        ),
    ]
