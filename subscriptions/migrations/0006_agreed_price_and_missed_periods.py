"""A subscription keeps the regular price its player agreed to at opt-in (the renewals charge it, not the
offer's price point of the day); a period that ended before it could be charged is recorded as a `missed`
charge row, without a payment, which the one-live-charge index keeps from ever being charged.

The subscriptions opened before this migration take their offer's price point as it is now (what their
renewals charged until now)."""

from typing import Any

import django.db.models.deletion
from django.db import migrations, models
from django.db.models import OuterRef, Subquery


def agreed_price_of_the_offer(apps: Any, schema_editor: Any) -> None:
    Subscription = apps.get_model("subscriptions", "Subscription")
    PlanOffer = apps.get_model("subscriptions", "PlanOffer")
    offer = PlanOffer.objects.filter(pk=OuterRef("offer_id"))
    Subscription.objects.update(
        price_point_id=Subquery(offer.values("price_point_id")[:1]),
        amount_minor=Subquery(offer.values("price_point__amount_minor")[:1]),
        currency=Subquery(offer.values("price_point__currency")[:1]),
    )


class Migration(migrations.Migration):
    dependencies = [
        ("carriers", "0007_operator_catalogue_and_health_from_the_journal"),
        ("subscriptions", "0005_reporting_indexes"),
    ]

    operations = [
        migrations.AddField(
            model_name="subscription",
            name="price_point",
            field=models.ForeignKey(
                null=True,
                help_text="The price point of each renewal, as agreed at opt-in.",
                on_delete=django.db.models.deletion.PROTECT,
                related_name="+",
                to="carriers.pricepoint",
            ),
        ),
        migrations.AddField(
            model_name="subscription",
            name="amount_minor",
            field=models.BigIntegerField(
                null=True, help_text="The agreed price per period, in minor units of the currency."
            ),
        ),
        migrations.AddField(
            model_name="subscription",
            name="currency",
            field=models.CharField(max_length=3, null=True),
        ),
        migrations.RunPython(agreed_price_of_the_offer, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="subscription",
            name="price_point",
            field=models.ForeignKey(
                help_text="The price point of each renewal, as agreed at opt-in.",
                on_delete=django.db.models.deletion.PROTECT,
                related_name="+",
                to="carriers.pricepoint",
            ),
        ),
        migrations.AlterField(
            model_name="subscription",
            name="amount_minor",
            field=models.BigIntegerField(help_text="The agreed price per period, in minor units of the currency."),
        ),
        migrations.AlterField(
            model_name="subscription",
            name="currency",
            field=models.CharField(max_length=3),
        ),
        migrations.AddConstraint(
            model_name="subscription",
            constraint=models.CheckConstraint(
                condition=models.Q(amount_minor__gt=0), name="subscription_amount_positive"
            ),
        ),
        migrations.AlterField(
            model_name="subscriptioncharge",
            name="outcome",
            field=models.CharField(
                choices=[
                    ("pending", "Pending"),
                    ("succeeded", "Succeeded"),
                    ("failed", "Failed"),
                    ("missed", "Missed"),
                ],
                default="pending",
                max_length=10,
            ),
        ),
        migrations.AlterField(
            model_name="subscriptioncharge",
            name="payment",
            field=models.ForeignKey(
                blank=True,
                db_constraint=False,
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="+",
                to="payments.payment",
            ),
        ),
        migrations.AlterField(
            model_name="subscriptioncharge",
            name="payment_created_at",
            field=models.DateTimeField(blank=True, editable=False, help_text="The payment's created_at.", null=True),
        ),
        migrations.RemoveConstraint(model_name="subscriptioncharge", name="subscription_one_live_charge_per_period"),
        migrations.AddConstraint(
            model_name="subscriptioncharge",
            constraint=models.UniqueConstraint(
                condition=models.Q(outcome__in=["pending", "succeeded", "missed"]),
                fields=("subscription", "period_index"),
                name="subscription_one_live_charge_per_period",
            ),
        ),
        migrations.AddConstraint(
            model_name="subscriptioncharge",
            constraint=models.CheckConstraint(
                condition=models.Q(outcome="missed", payment__isnull=True, payment_created_at__isnull=True)
                | (~models.Q(outcome="missed") & models.Q(payment__isnull=False, payment_created_at__isnull=False)),
                name="subscription_charge_payment_unless_missed",
            ),
        ),
    ]
