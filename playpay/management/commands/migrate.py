"""`manage.py migrate` with the migrations' own statement bound.

Every PostgreSQL connection cancels a statement after DATABASE_STATEMENT_TIMEOUT_MS (30 s), a web request's
bound. A migration that rebuilds a table at volume (partitioning ten million payments, an index over twenty
million events) runs far longer: here every connection the command opens gets MIGRATION_STATEMENT_TIMEOUT_MS
instead, bounded still (4 h by default).
"""

from typing import Any

from django.conf import settings
from django.core.management.commands.migrate import Command as MigrateCommand
from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.signals import connection_created


def _migration_bound(sender: Any, connection: BaseDatabaseWrapper, **kwargs: Any) -> None:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT set_config('statement_timeout', %s, false)", [str(settings.MIGRATION_STATEMENT_TIMEOUT_MS)]
            )


class Command(MigrateCommand):
    help = MigrateCommand.help + " Statements run under MIGRATION_STATEMENT_TIMEOUT_MS, not the web's bound."

    def handle(self, *args: Any, **options: Any) -> None:
        connection_created.connect(_migration_bound)
        try:
            for connection in connections.all(initialized_only=True):
                if connection.connection is not None:
                    _migration_bound(None, connection)
            super().handle(*args, **options)
        finally:
            connection_created.disconnect(_migration_bound)
            # Back to the bound the connection was opened with (a caller in this process keeps using it).
            for connection in connections.all(initialized_only=True):
                if connection.vendor == "postgresql" and connection.connection is not None:
                    with connection.cursor() as cursor:
                        cursor.execute("RESET statement_timeout")
