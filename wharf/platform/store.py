"""The store: one SQLAlchemy engine + sessions, schema upgraded by Alembic on open.

SQLite (default, a file under data_dir) runs in WAL mode with a busy timeout
and foreign keys on. Python's sqlite3 driver is put in autocommit mode and we
emit BEGIN ourselves, so that write transactions can start with
BEGIN IMMEDIATE (take the write lock up front: no lock-upgrade deadlocks, and
busy_timeout applies). PostgreSQL is used by URL (postgresql+psycopg://...).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event, inspect
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from wharf.platform.private_files import private_sqlite

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
SQLITE_BUSY_TIMEOUT_MS = 30_000


def _alembic_config(conn=None):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = conn
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Run the packaged Alembic migrations up to `revision`."""
    from alembic import command

    with engine.begin() as conn:
        command.upgrade(_alembic_config(conn), revision)


def _setup_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None          # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA synchronous = NORMAL")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        immediate = conn.get_execution_options().get("wharf_write", False)
        # Straight to the driver: this runs for every transaction of the hot path, and
        # conn.exec_driver_sql's execution context costs more than the statement itself.
        conn.connection.dbapi_connection.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")


class Store:
    """Holds the engine and hands out sessions. Thread-safe; one per process."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._read = sessionmaker(bind=engine, expire_on_commit=False)
        self._write_engine = engine.execution_options(wharf_write=True)
        self._write = sessionmaker(bind=self._write_engine, expire_on_commit=False)

    @classmethod
    def open(cls, url: str, *, migrate: bool = True, echo: bool = False) -> "Store":
        u = make_url(url)
        kw: dict = {"echo": echo, "future": True}
        if u.get_backend_name() == "sqlite":
            if u.database and u.database != ":memory:":
                Path(u.database).parent.mkdir(parents=True, exist_ok=True)
                private_sqlite(u.database)        # 0600, before SQLite makes it (and -wal, -shm) 0644
            kw["connect_args"] = {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
        else:
            kw.update(pool_pre_ping=True, pool_size=10, max_overflow=20)
        engine = create_engine(u, **kw)
        if engine.dialect.name == "sqlite":
            _setup_sqlite(engine)
        store = cls(engine)
        if migrate:
            upgrade(engine)
        return store

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextlib.contextmanager
    def read(self) -> Iterator[Session]:
        """A session for reads (a transaction that is rolled back at the end)."""
        with self._read() as s:
            yield s

    @contextlib.contextmanager
    def write(self) -> Iterator[Session]:
        """One write transaction: committed on success, rolled back on any error."""
        with self._write() as s, s.begin():
            yield s

    @contextlib.contextmanager
    def read_conn(self) -> Iterator[Connection]:
        """A Core connection for per-request reads (rolled back at the end)."""
        with self.engine.connect() as conn:
            yield conn

    @contextlib.contextmanager
    def write_conn(self) -> Iterator[Connection]:
        """One write transaction on a Core connection, for the per-request hot path
        (quota, usage): prebuilt statements, no ORM unit of work."""
        with self._write_engine.begin() as conn:
            yield conn

    def insert(self, model):
        """An INSERT for this dialect that supports .on_conflict_do_nothing(...)."""
        mod = postgresql if self.dialect == "postgresql" else sqlite
        return mod.insert(model)

    def table_names(self) -> list[str]:
        return inspect(self.engine).get_table_names()

    def close(self) -> None:
        self.engine.dispose()
