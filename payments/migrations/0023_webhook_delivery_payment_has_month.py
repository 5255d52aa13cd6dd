"""A webhook delivery that names its payment names its month too: the composite foreign key (MATCH SIMPLE)
checks nothing while payment_created_at is NULL, whatever wrote the row (bulk_create, update(payment=…))."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("payments", "0022_payments_partitioned_by_month"),
        ("tenants", "0001_initial"),
    ]

    operations = [
        migrations.AddConstraint(
            model_name="webhookdelivery",
            constraint=models.CheckConstraint(
                condition=models.Q(("payment__isnull", True), ("payment_created_at__isnull", False), _connector="OR"),
                name="webhook_delivery_payment_has_month",
            ),
        ),
    ]
