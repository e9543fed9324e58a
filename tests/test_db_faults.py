"""The state database when things go wrong for real: a damaged file at start, a full disk, a lock held past the
busy timeout, a broken statement. Clients get a stable message and code in the OpenAI envelope, never SQLite's
own words; a damaged database stops `tunelab serve` before it serves anything."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx2 as httpx
import pytest
from fastapi.testclient import TestClient

from conftest import free_port, serve_in_thread

TUNELAB = str(Path(sys.executable).with_name("tunelab"))
KEY = "db-faults-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


def damaged_database(home: Path) -> Path:
    """A real state database, filled past a few pages, with a page in its middle overwritten by garbage."""
    from tunelab.store.db import Database

    path = home / "state" / "tunelab.db"
    db = Database(path)
    db.migrate()
    with db.write() as conn:
        conn.executemany("INSERT INTO files (id, filename, purpose, bytes, sha256, status, created_at) "
                         "VALUES (?, ?, 'fine-tune', 1, ?, 'processed', 0)",
                         [(f"file-{i:06d}", f"name-{i}.jsonl" * 4, "0" * 64) for i in range(3000)])
    db.connection().execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    size = path.stat().st_size
    assert size > 64 * 4096
    with path.open("r+b") as f:  # a whole page in the middle, as a torn write or a bad sector leaves it
        f.seek((size // 4096 // 2) * 4096)
        f.write(os.urandom(4096))
    return path


def test_a_damaged_database_stops_the_start_before_the_banner(tmp_path):
    home = tmp_path / "home"
    path = damaged_database(home)
    env = {**os.environ, "TUNELAB_HOME": str(home), "TUNELAB_API_KEY": KEY}
    started = time.monotonic()
    result = subprocess.run([TUNELAB, "serve", "--port", str(free_port())], capture_output=True, text=True,
                            env=env, timeout=120)
    said = result.stdout + result.stderr
    assert result.returncode == 1, said
    assert "serving the OpenAI-compatible API" not in said  # refused before the banner
    assert "Traceback" not in said
    assert str(path) in result.stderr and "backup" in result.stderr and "move it aside" in result.stderr
    assert f"mv {path} {path}.damaged" in result.stderr.replace("\n", "")
    assert time.monotonic() - started < 60


@contextlib.contextmanager
def tmpfs(where: Path, size: str):
    """A real, small filesystem (root mounts tmpfs); skips when this machine cannot mount one."""
    where.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"a full disk needs a small tmpfs, and mounting one failed: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(directory: Path) -> Path:
    """Write a filler file until the filesystem refuses another byte."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as f:
        chunk = b"\0" * (1 << 16)
        while True:
            try:
                f.write(chunk)
            except OSError:
                break
        for _ in range(64):  # the last partial blocks
            try:
                f.write(b"\0" * 512)
            except OSError:
                break
    return filler


def test_a_full_disk_on_a_database_write_is_a_503_and_the_service_recovers(tmp_path):
    if os.geteuid() != 0:  # not root: run this test again as root of its own user and mount namespaces
        again = subprocess.run(["unshare", "-rm", sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                f"{__file__}::test_a_full_disk_on_a_database_write_is_a_503_and_the_service_recovers"],
                               capture_output=True, text=True, cwd=Path(__file__).parent.parent)
        if again.returncode != 0 and "unshare" in again.stderr:
            pytest.skip(f"a full disk needs a small tmpfs: not root, and unshare -rm failed: {again.stderr.strip()}")
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-2000:]
        return
    with tmpfs(tmp_path / "small", "24m") as small, serve_in_thread(home=str(small / "home"), api_key=KEY) as running:
        http = httpx.Client(base_url=running.base_url, headers=AUTH, timeout=30)
        assert http.put("/content_filters/before", json={"blocklist": ["one"]}).status_code == 200
        big = {"blocklist": [f"term-{i}-" + "x" * 400 for i in range(1000)]}  # more new pages than any spare
        filler = fill(small)

        full = http.put("/content_filters/while-full", json=big)
        assert full.status_code == 503, full.text
        error = full.json()["error"]
        assert error["code"] == "disk_full" and error["type"] == "server_error"
        assert "disk is full" in error["message"] and "sqlite" not in error["message"].lower()
        assert full.headers["x-should-retry"] == "true"
        for lines in (10, 20000):  # held in a write buffer until the end, and written as it arrives
            upload = http.post("/files", files={"file": ("t.jsonl", b'{"messages": []}\n' * lines)},
                               data={"purpose": "fine-tune"})
            assert upload.status_code == 503 and upload.json()["error"]["code"] == "disk_full", upload.text
            assert not list((small / "home" / "state" / "files").iterdir())  # no half-written upload kept
        assert http.get("/content_filters/before").status_code == 200  # reads still answer

        filler.unlink()
        again = http.put("/content_filters/while-full", json=big)
        assert again.status_code == 200, again.text
        assert len(http.get("/content_filters/while-full").json()["blocklist"]) == 1000
        with contextlib.closing(sqlite3.connect(small / "home" / "state" / "tunelab.db")) as db:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


@pytest.fixture
def fresh_app(tmp_path, monkeypatch):
    """The app over its own database, without the worker; `(client, database path)`."""
    from tunelab.app import create_app
    from tunelab.config import Settings
    from tunelab.store import db

    monkeypatch.setattr(db, "BUSY_TIMEOUT_MS", 300)  # a short wait for the lock, so the test is quick
    app = create_app(Settings(home=tmp_path / "home", api_key=KEY), run_worker=False)
    with TestClient(app, base_url="http://127.0.0.1:8000", raise_server_exceptions=False) as client:
        client.headers.update(AUTH)
        yield client, tmp_path / "home" / "state" / "tunelab.db"


def test_a_lock_held_past_the_busy_timeout_is_a_503_without_sqlite_words(fresh_app):
    client, path = fresh_app
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        response = client.put("/v1/content_filters/locked", json={"blocklist": ["x"]})
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error == {"message": "the state database is busy; try again shortly", "type": "server_error",
                     "param": None, "code": "store_unavailable"}
    assert client.put("/v1/content_filters/locked", json={"blocklist": ["x"]}).status_code == 200


def test_a_programming_error_is_a_500_that_says_nothing_of_the_inside(fresh_app):
    client, path = fresh_app
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("DROP TABLE content_filters")  # a statement that can no longer work: a bug, not an outage
    response = client.get("/v1/content_filters")
    assert response.status_code == 500, response.text
    assert response.json()["error"] == {"message": "the server hit an unexpected error; see its log",
                                        "type": "server_error", "param": None, "code": "server_error"}
    assert response.headers["x-should-retry"] == "false"  # the SDK would otherwise resend it
