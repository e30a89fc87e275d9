"""Alembic environment: always run with a connection given by conveyor_notifier.db."""

from __future__ import annotations

from alembic import context

from conveyor_notifier.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("migrations run when the notifier starts, which supplies the connection")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=True,  # SQLite alters tables by copying them
    version_table="alembic_version_notifier",  # its own: the database may be shared with other services
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
