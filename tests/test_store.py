"""The state database and the blob store, on real files in a temporary directory."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from tunelab.store.blobs import BlobStore, FileTooLarge, new_id
from tunelab.store.db import Database, StoreCorrupt, migrations


def test_migrations_apply_once_in_order(tmp_path):
    db = Database(tmp_path / "tunelab.db")
    latest = len(migrations())
    assert db.migrate() == latest and db.migrate() == latest
    tables = {r["name"] for r in db.query("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"files", "idempotency_keys"} <= tables
    assert db.query("PRAGMA journal_mode")[0][0] == "wal"


def test_a_failed_write_leaves_nothing(tmp_path):
    db = Database(tmp_path / "tunelab.db")
    db.migrate()
    with pytest.raises(sqlite3.IntegrityError):
        with db.write() as conn:
            row = ("file-1", "a.jsonl", "fine-tune", 3, "x", 1)
            conn.execute("INSERT INTO files (id, filename, purpose, bytes, sha256, created_at) VALUES (?,?,?,?,?,?)", row)
            conn.execute("INSERT INTO files (id, filename, purpose, bytes, sha256, created_at) VALUES (?,?,?,?,?,?)", row)
    assert db.query("SELECT count(*) FROM files")[0][0] == 0


def test_concurrent_writers_never_see_database_is_locked(tmp_path):
    db = Database(tmp_path / "tunelab.db")
    db.migrate()
    errors = []

    def writer(n: int) -> None:
        try:
            for i in range(25):
                with db.write() as conn:
                    count = conn.execute("SELECT count(*) FROM files").fetchone()[0]
                    conn.execute("INSERT INTO files (id, filename, purpose, bytes, sha256, created_at) "
                                 "VALUES (?, 'f', 'fine-tune', ?, 'x', 0)", (f"file-{n}-{i}", count))
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    sizes = sorted(r[0] for r in db.query("SELECT bytes FROM files"))
    assert sizes == list(range(200))  # every read-then-write saw the writes before it


def test_a_damaged_database_is_refused_by_name(tmp_path):
    path = tmp_path / "tunelab.db"
    path.write_bytes(b"SQLite format 3\x00" + b"\xff" * 4000)
    with pytest.raises(StoreCorrupt, match=str(path)):
        Database(path).check_integrity()


def test_blob_is_stored_under_its_id_with_size_and_hash(tmp_path):
    import hashlib

    store = BlobStore(tmp_path / "files")
    blob_id = new_id("file")
    with store.writer(blob_id, limit=100) as w:
        w.write(b'{"a": 1}\n')
        w.write(b'{"b": 2}\n')
        w.commit()
    assert store.path(blob_id).read_bytes() == b'{"a": 1}\n{"b": 2}\n'
    assert w.size == 18 and w.sha256 == hashlib.sha256(b'{"a": 1}\n{"b": 2}\n').hexdigest()
    assert [p.name for p in (tmp_path / "files").iterdir()] == [blob_id]
    store.delete(blob_id)
    assert list((tmp_path / "files").iterdir()) == []


@pytest.mark.parametrize("size, ok", [(99, True), (100, True), (101, False)])
def test_size_cap_at_the_limit_and_one_byte_over(tmp_path, size, ok):
    store = BlobStore(tmp_path / "files")
    with store.writer("file-x", limit=100) as w:
        if ok:
            w.write(b"x" * size)
            w.commit()
        else:
            with pytest.raises(FileTooLarge) as caught:
                for _ in range(size):
                    w.write(b"x")
            assert caught.value.status == 413 and caught.value.code == "file_too_large"
    assert [p.name for p in (tmp_path / "files").iterdir()] == (["file-x"] if ok else [])


def test_an_interrupted_write_leaves_nothing(tmp_path):
    store = BlobStore(tmp_path / "files")
    with pytest.raises(ConnectionError):
        with store.writer("file-y", limit=100) as w:
            w.write(b"half")
            raise ConnectionError("client went away")
    assert list((tmp_path / "files").iterdir()) == []


def test_ids_never_come_from_user_names(tmp_path):
    store = BlobStore(tmp_path / "files")
    for bad in ("../../etc/cron.d/x", "/abs", "..\\x", ".hidden", ""):
        with pytest.raises(ValueError):
            store.path(bad)


def test_an_uncommitted_writer_leaves_nothing_even_over_an_existing_blob(tmp_path):
    store = BlobStore(tmp_path / "files")
    with store.writer("file-z", limit=100) as w:
        w.write(b"first")
        w.commit()
    with store.writer("file-z", limit=100) as w:
        w.write(b"second, never committed")
    assert [p.name for p in (tmp_path / "files").iterdir()] == ["file-z"]
    assert store.path("file-z").read_bytes() == b"first"
