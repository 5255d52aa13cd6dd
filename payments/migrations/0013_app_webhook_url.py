from django.db import migrations, models


class Migration(migrations.Migration):
    """Outbound calls to apps are webhooks; "notification" is kept for carriers' callbacks."""

    dependencies = [
        ("payments", "0012_hidden_state_fields"),
    ]

    operations = [
        migrations.RenameField(model_name="app", old_name="notification_url", new_name="webhook_url"),
        migrations.AlterField(
            model_name="app",
            name="webhook_url",
            field=models.URLField(blank=True, help_text="Where PlayPay sends payment webhooks."),
        ),
    ]
