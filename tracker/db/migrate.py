"""Alembic, driven from code: ``tracker db upgrade``, the start-up upgrade on SQLite, the readiness check."""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from tracker.db.engine import write_transaction

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(url: str) -> Config:
    config = Config()
    logging.getLogger("alembic").setLevel(logging.WARNING)
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate in one write transaction: on SQLite write-locked from BEGIN, so processes that start together on
    a new file take turns (the busy timeout) and the later ones find the schema at head, rather than fail when
    a read transaction cannot become a write one."""
    config = alembic_config(engine.url.render_as_string(hide_password=False))
    with write_transaction(engine) as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, revision)


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
