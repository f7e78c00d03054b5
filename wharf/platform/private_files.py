"""The data dir holds credentials (hashed keys, encrypted secrets, the key that decrypts
them): the dir is 0700 and its files 0600, also where an older version (or SQLite's
0644 default) made them readable by others."""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger("wharf.platform")

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: Path | str) -> Path:
    path = Path(path)
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    _chmod(path, DIR_MODE)
    return path


def private_file(path: Path | str) -> Path:
    """Create `path` empty with mode 0600 if it does not exist, else make it 0600."""
    path = Path(path)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
    except FileExistsError:
        _chmod(path, FILE_MODE)
    return path


def private_sqlite(db: Path | str) -> None:
    """The database file before SQLite opens it (its -wal and -shm files then take the
    database's mode), and those of an existing database."""
    db = Path(db)
    private_file(db)
    for suffix in ("-wal", "-shm", "-journal"):
        side = Path(str(db) + suffix)
        if side.exists():
            _chmod(side, FILE_MODE)


def _chmod(path: Path, mode: int) -> None:
    try:
        if path.stat().st_mode & 0o777 != mode:
            path.chmod(mode)
    except OSError as exc:               # not ours to change (another owner, read-only mount)
        log.warning("could not make %s mode %o: %s", path, mode, exc)
