"""Alembic environment: uses the connection handed in by ``tracker.db.migrate`` or the configured URL."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from tracker.db.engine import make_engine
from tracker.db.tables import metadata

config = context.config


def run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=metadata,
                      render_as_batch=connection.dialect.name == "sqlite", compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    run(connection)
else:
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        from tracker.settings import Settings

        url = Settings.from_env().database_url
    engine = make_engine(url)
    with engine.begin() as conn:
        run(conn)
    engine.dispose()
