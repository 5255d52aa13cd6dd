"""SQL a migration runs on PostgreSQL only: the database's own guards and triggers, which SQLite does without."""

from typing import Any

from django.db import migrations


def on_postgresql(forward: str, backward: str, *, hints: dict[str, Any] | None = None) -> migrations.RunPython:
    """A migration operation that runs `forward` (and `backward` when unapplied) on PostgreSQL, nothing elsewhere."""

    def run(sql: str) -> Any:
        def apply(apps: Any, schema_editor: Any) -> None:
            if schema_editor.connection.vendor == "postgresql":
                with schema_editor.connection.cursor() as cursor:
                    cursor.execute(sql)  # no parameters: a % in the SQL is PL/pgSQL's

        return apply

    return migrations.RunPython(run(forward), run(backward), hints=hints or {})
