"""Alembic environment for the Wharf store.

Run programmatically by wharf.platform.store.upgrade(); the caller passes an
open connection in config.attributes["connection"]. No alembic.ini is needed.
"""

from alembic import context
from sqlalchemy import create_engine

from wharf.platform.models import Base

config = context.config
target_metadata = Base.metadata


def _run(connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata,
                      render_as_batch=connection.dialect.name == "sqlite",
                      compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata,
                      literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    conn = config.attributes.get("connection")
    if conn is not None:
        _run(conn)
    else:
        engine = create_engine(config.get_main_option("sqlalchemy.url"))
        with engine.begin() as c:
            _run(c)
        engine.dispose()
