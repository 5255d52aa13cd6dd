"""Export jobs get a heartbeat, a count of attempts and a folder each; the total may be an estimate.

Jobs left running by a worker that died before this upgrade get their start as their last heartbeat and one
attempt: the periodic check of stale exports (0007) queues them again.
"""

from typing import Any

from django.conf import settings
from django.db import migrations, models
from django.db.models.functions import Coalesce

import reporting.models
import reporting.storage


def date_running_jobs(apps: Any, schema_editor: Any) -> None:
    job_model = apps.get_model("reporting", "ExportJob")
    running = job_model.objects.filter(status="running", heartbeat_at__isnull=True)
    running.update(heartbeat_at=Coalesce("started_at", "created_at"), attempts=1)


class Migration(migrations.Migration):
    dependencies = [
        ("reporting", "0005_remove_simulator_datasets"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.RemoveConstraint(
            model_name="exportjob",
            name="export_progress_le_total",
        ),
        migrations.AddField(
            model_name="exportjob",
            name="attempts",
            field=models.PositiveSmallIntegerField(default=0, help_text="Times a worker claimed it."),
        ),
        migrations.AddField(
            model_name="exportjob",
            name="heartbeat_at",
            field=models.DateTimeField(blank=True, help_text="Last sign of life of its worker.", null=True),
        ),
        migrations.AddField(
            model_name="exportjob",
            name="rows_total_exact",
            field=models.BooleanField(default=False, help_text="Whether rows_total is a count, not a guess."),
        ),
        migrations.AddField(
            model_name="exportjob",
            name="worker",
            field=models.CharField(blank=True, help_text="The process that claimed it last.", max_length=120),
        ),
        migrations.AlterField(
            model_name="exportjob",
            name="file",
            field=models.FileField(
                blank=True, storage=reporting.storage.reporting_storage, upload_to=reporting.models.export_file_path
            ),
        ),
        migrations.AlterField(
            model_name="exportjob",
            name="rows_total",
            field=models.PositiveIntegerField(
                blank=True, help_text="Estimated while the export runs (the planner's estimate when large).", null=True
            ),
        ),
        migrations.AlterField(
            model_name="exportjob",
            name="status",
            field=models.CharField(
                choices=[("pending", "queued"), ("running", "Running"), ("done", "Done"), ("failed", "Failed")],
                default="pending",
                max_length=10,
            ),
        ),
        migrations.AddIndex(
            model_name="exportjob",
            index=models.Index(
                condition=models.Q(("status__in", ["pending", "running"])),
                fields=["status", "heartbeat_at"],
                name="export_job_working_idx",
            ),
        ),
        migrations.RunPython(date_running_jobs, migrations.RunPython.noop),
        migrations.AddConstraint(
            model_name="exportjob",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    models.Q(("status", "running"), _negated=True), ("heartbeat_at__isnull", False), _connector="OR"
                ),
                name="export_running_has_heartbeat",
            ),
        ),
    ]
