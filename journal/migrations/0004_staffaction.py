import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


def _move_content_types(apps, schema_editor, models, old, new):
    """Keep permissions and admin log entries: the content types follow the models to their new app."""
    content_type = apps.get_model("contenttypes", "ContentType")
    for model in models:
        if not content_type.objects.filter(app_label=new, model=model).exists():
            content_type.objects.filter(app_label=old, model=model).update(app_label=new)


def rename_index(apps, schema_editor):
    """The index follows the table: Django's state knows it by the name a journal model gets."""
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("ALTER INDEX payments_st_object__8bfe4b_idx RENAME TO journal_sta_object__9a9dbf_idx")
    else:
        schema_editor.execute("DROP INDEX payments_st_object__8bfe4b_idx")
        schema_editor.execute(
            'CREATE INDEX "journal_sta_object__9a9dbf_idx" ON "journal_staffaction" ("object_type", "object_id")'
        )


def unrename_index(apps, schema_editor):
    # Runs before the table gets its old name back.
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("ALTER INDEX journal_sta_object__9a9dbf_idx RENAME TO payments_st_object__8bfe4b_idx")
    else:
        schema_editor.execute("DROP INDEX journal_sta_object__9a9dbf_idx")
        schema_editor.execute(
            'CREATE INDEX "payments_st_object__8bfe4b_idx" ON "journal_staffaction" ("object_type", "object_id")'
        )


def forwards(apps, schema_editor):
    _move_content_types(apps, schema_editor, ["staffaction"], "payments", "journal")


def backwards(apps, schema_editor):
    _move_content_types(apps, schema_editor, ["staffaction"], "journal", "payments")


class Migration(migrations.Migration):
    """The staff log moves from payments beside the journal: its table is renamed, its rows stay."""

    dependencies = [
        ("payments", "0013_app_webhook_url"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("journal", "0003_schedule_spool_drain"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="StaffAction",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                            ),
                        ),
                        ("action", models.CharField(max_length=50)),
                        ("object_type", models.CharField(max_length=50)),
                        ("object_id", models.CharField(max_length=64)),
                        ("reason", models.CharField(blank=True, max_length=255)),
                        ("outcome", models.CharField(blank=True, max_length=255)),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                        (
                            "user",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.PROTECT,
                                related_name="+",
                                to=settings.AUTH_USER_MODEL,
                            ),
                        ),
                    ],
                    options={
                        "ordering": ["-id"],
                        "indexes": [
                            models.Index(fields=["object_type", "object_id"], name="journal_sta_object__9a9dbf_idx")
                        ],
                    },
                ),
            ],
            database_operations=[
                migrations.RunSQL(
                    "ALTER TABLE payments_staffaction RENAME TO journal_staffaction",
                    "ALTER TABLE journal_staffaction RENAME TO payments_staffaction",
                ),
                migrations.RunPython(rename_index, unrename_index),
            ],
        ),
        migrations.RunPython(forwards, backwards),
    ]
