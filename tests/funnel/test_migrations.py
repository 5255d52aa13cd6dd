"""The funnel's beat entries, both ways: migrating back over the move of the partition job to the shared one
leaves no entry naming a task that does not exist, and the shared job still creates the events' partitions."""

from importlib import import_module

import pytest
from django.apps import apps
from django_celery_beat.models import PeriodicTask

from playpay.celery import app as celery_app

pytestmark = pytest.mark.django_db


def test_the_partition_job_move_reversed_leaves_only_entries_of_existing_tasks() -> None:
    celery_app.loader.import_default_modules()
    (operation,) = import_module("funnel.migrations.0009_partitions_job_moves_to_playpay").Migration.operations
    operation.reverse_code(apps, None)
    tasks = dict(PeriodicTask.objects.values_list("name", "task"))
    assert tasks["create partitions ahead"] == "playpay.tasks.create_partitions_ahead"
    assert [task for task in tasks.values() if task not in celery_app.tasks] == []
    operation.code(apps, None)  # and forwards again
    assert [task for task in PeriodicTask.objects.values_list("task", flat=True) if task not in celery_app.tasks] == []
