"""The SQLite state database: one file in WAL mode, numbered migrations, writes in `BEGIN IMMEDIATE` transactions.

SQLite the boring way: plain SQL; migrations are files `migrations/NNNN_name.sql`, applied in order and recorded
in `PRAGMA user_version`, never edited once shipped; every write takes the write lock up front (a deferred
transaction that upgrades from read to write fails at once with SQLITE_BUSY instead of waiting); `synchronous=FULL`
so a record acknowledged to a client survives a crash; `quick_check` before serving (a damaged file stops the start).
"""

from __future__ import annotations

import re
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..errors import TunelabError

MIGRATIONS = Path(__file__).with_name("migrations")
BUSY_TIMEOUT_MS = 5_000


class StoreCorrupt(TunelabError):
    code = "store_corrupt"
    status = 503


class Database:
    """A handle on the state database; each thread gets its own connection."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._local = threading.local()

    def connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: no implicit transactions; `write()` opens them explicitly.
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000,
                                   check_same_thread=False)
            try:
                conn.row_factory = sqlite3.Row
                conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = FULL")
                conn.execute("PRAGMA foreign_keys = ON")
            except BaseException:  # not a database, or a damaged one: no half-set-up connection kept
                conn.close()
                raise
            self._local.conn = conn
        return conn

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction holding the write lock from its first statement; rolled back on any error."""
        conn = self.connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        try:
            conn.execute("COMMIT")
        except BaseException:  # disk full, I/O error: leave the connection usable for the next write
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def query(self, sql: str, params: tuple | dict = ()) -> list[sqlite3.Row]:
        return self.connection().execute(sql, params).fetchall()

    def version(self) -> int:
        return self.connection().execute("PRAGMA user_version").fetchone()[0]

    def migrate(self) -> int:
        """Apply every migration newer than the database, each in its own transaction; return the new version."""
        for number, path in migrations():
            if number <= self.version():
                continue
            with self.write() as conn:
                for statement in _statements(path.read_text()):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number}")
        return self.version()

    def compact(self) -> int:
        """Rewrite the database without its free pages (where deleted rows linger) and empty the write-ahead
        log; return the bytes the database takes afterwards."""
        conn = self.connection()
        conn.execute("VACUUM")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return self.bytes()

    def bytes(self) -> int:
        """The database file plus its write-ahead log and shared-memory index."""
        return sum(p.stat().st_size for p in (self.path, self.path.with_name(self.path.name + "-wal"),
                                              self.path.with_name(self.path.name + "-shm")) if p.is_file())

    def check_integrity(self) -> None:
        """Refuse to serve on a damaged database, naming the file and what to do. `quick_check` reads every page
        (what a torn or overwritten file breaks) without the full check's index comparison, so it stays quick."""
        try:
            result = self.connection().execute("PRAGMA quick_check").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            self.close()
            raise StoreCorrupt(f"the state database {self.path} is damaged ({exc}). {self._what_to_do()}") from None
        if result != "ok":
            raise StoreCorrupt(f"the state database {self.path} failed its integrity check ({result.splitlines()[0]})."
                               f" {self._what_to_do()}")

    def _what_to_do(self) -> str:
        return (f"Stop tunelab, then restore the file from a backup, or move it aside (with its -wal and -shm "
                f"files) to start with an empty one: mv {self.path} {self.path}.damaged")

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


def migrations() -> list[tuple[int, Path]]:
    """The migration files, by number; numbers must be unique and start at 1."""
    found = []
    for path in sorted(MIGRATIONS.glob("*.sql")):
        match = re.match(r"(\d{4})_\w+\.sql$", path.name)
        if not match:
            raise AssertionError(f"migration file {path.name} is not named NNNN_name.sql")
        found.append((int(match.group(1)), path))
    numbers = [n for n, _ in found]
    assert numbers == list(range(1, len(numbers) + 1)), f"migrations must be numbered 1..n, found {numbers}"
    return found


def _statements(script: str) -> list[str]:
    """Split a migration into statements, line by line, with SQLite's own idea of where a statement ends."""
    statements, buffer = [], ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    if buffer.strip() and not all(l.strip().startswith("--") or not l.strip() for l in buffer.splitlines()):
        raise AssertionError(f"unterminated statement at the end of a migration: {buffer.strip()[:80]}")
    return statements
