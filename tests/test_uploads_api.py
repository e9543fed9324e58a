"""The Uploads API (`/v1/uploads`): a file sent in parts through the stock SDK's `upload_file_chunked`, its parts
on disk until complete, and every wrong size or checksum refused with nothing kept."""

from __future__ import annotations

import hashlib
import json

import httpx2 as httpx
import openai
import pytest

from conftest import chat, serve_in_thread, varied_chats

KEY = {"Authorization": "Bearer test-key"}


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def kept(home) -> dict[str, list[str]]:
    """What the service holds on disk: files, and parts still waiting in uploads."""
    state = home / "state"
    return {"files": sorted(p.name for p in (state / "files").iterdir()) if (state / "files").is_dir() else [],
            "parts": sorted(str(p.relative_to(state / "uploads")) for p in (state / "uploads").rglob("*"))
            if (state / "uploads").is_dir() else []}


@pytest.fixture
def running(monkeypatch, home):
    monkeypatch.setenv("TUNELAB_API_KEY", "test-key")
    monkeypatch.setenv("TUNELAB_MAX_FILE_BYTES", "4000")
    with serve_in_thread() as service:
        yield service


def test_upload_file_chunked_makes_the_same_file_as_one_request(running, tmp_path, home):
    client = running.client(max_retries=0)
    data = jsonl(varied_chats(10))
    assert 1000 < len(data) <= 4000
    path = tmp_path / "train.jsonl"
    path.write_bytes(data)
    upload = client.uploads.upload_file_chunked(file=path, mime_type="text/jsonl", purpose="fine-tune",
                                                part_size=700, md5=hashlib.md5(data).hexdigest())
    assert upload.object == "upload" and upload.id.startswith("upload_") and upload.status == "completed"
    assert upload.bytes == len(data) and upload.filename == "train.jsonl" and upload.purpose == "fine-tune"
    assert upload.expires_at - upload.created_at == 3600
    assert upload.file.bytes == len(data) and upload.file.purpose == "fine-tune"
    assert client.files.content(upload.file.id).content == data
    assert client.files.retrieve(upload.file.id).filename == "train.jsonl"
    # The parts are gone once assembled; the file is an ordinary one.
    assert kept(home) == {"files": [upload.file.id], "parts": []}
    assert client.files.list().data[0].id == upload.file.id


def test_parts_are_assembled_in_the_order_complete_names(running):
    client = running.client(max_retries=0)
    first, second = jsonl([chat("one?")]), jsonl([chat("two?")])
    upload = client.uploads.create(bytes=len(first) + len(second), filename="t.jsonl", mime_type="text/jsonl",
                                   purpose="fine-tune")
    assert upload.status == "pending" and upload.file is None
    b = client.uploads.parts.create(upload.id, data=second)  # sent out of order, listed in order
    a = client.uploads.parts.create(upload.id, data=first)
    assert a.object == "upload.part" and a.upload_id == upload.id and a.id.startswith("part_")
    done = client.uploads.complete(upload.id, part_ids=[a.id, b.id])
    assert client.files.content(done.file.id).content == first + second


@pytest.mark.parametrize("mistake", ["short", "long_in_total", "md5"])
def test_a_wrong_size_or_checksum_is_refused_and_nothing_is_kept(running, home, mistake):
    client = running.client(max_retries=0)
    data = jsonl([chat("a?"), chat("b?")])
    half = len(data) // 2
    declared = len(data) + (1 if mistake == "short" else 0)
    upload = client.uploads.create(bytes=declared, filename="t.jsonl", mime_type="text/jsonl", purpose="fine-tune")
    parts = [client.uploads.parts.create(upload.id, data=data[:half]).id,
             client.uploads.parts.create(upload.id, data=data[half:]).id]
    if mistake == "long_in_total":  # one more part would pass the declared size: refused as it arrives
        with pytest.raises(openai.APIStatusError) as caught:
            client.uploads.parts.create(upload.id, data=b"x")
        assert caught.value.status_code == 413 and caught.value.body["param"] == "data"
        assert len(kept(home)["parts"]) == 3  # the folder and the two parts, not the refused one
        parts = parts[:1]
    md5 = "0" * 32 if mistake == "md5" else hashlib.md5(data).hexdigest()
    with pytest.raises(openai.BadRequestError) as caught:
        client.uploads.complete(upload.id, part_ids=parts, md5=md5)
    assert caught.value.body["param"] == ("md5" if mistake == "md5" else "bytes")
    assert "cancelled" in caught.value.body["message"]
    assert kept(home) == {"files": [], "parts": []} and client.files.list().data == []
    with pytest.raises(openai.BadRequestError) as caught:  # the upload is over: no more parts, no second try
        client.uploads.parts.create(upload.id, data=data)
    assert caught.value.body["code"] == "upload_not_pending"


def test_bad_requests_are_refused_with_the_field_named(running, home):
    client = running.client(max_retries=0)
    upload = client.uploads.create(bytes=10, filename="t.jsonl", mime_type="text/jsonl", purpose="fine-tune")
    cases = [
        (lambda: client.uploads.create(bytes=10, filename="t.csv", mime_type="text/csv", purpose="fine-tune"),
         "filename"),
        (lambda: client.uploads.create(bytes=10, filename="t.jsonl", mime_type="text/jsonl", purpose="batch"),
         "purpose"),
        (lambda: client.uploads.create(bytes=0, filename="t.jsonl", mime_type="text/jsonl", purpose="fine-tune"),
         "bytes"),
        (lambda: client.uploads.complete(upload.id, part_ids=["part_nope"]), "part_ids"),
        (lambda: client.uploads.complete(upload.id, part_ids=[]), "part_ids"),
        (lambda: client.uploads.complete(upload.id, part_ids=["a"], md5="not-hex"), "md5"),
    ]
    for call, param in cases:
        with pytest.raises(openai.BadRequestError) as caught:
            call()
        assert caught.value.body["param"] == param, caught.value.body
    # A part bigger than the declared size is cut off while it streams, and leaves nothing.
    with pytest.raises(openai.APIStatusError) as caught:
        client.uploads.parts.create(upload.id, data=b"x" * 11)
    assert caught.value.status_code == 413 and caught.value.body["code"] == "file_too_large"
    # Raw HTTP: a part with no `data`, a part that is not multipart, an unknown upload.
    url = f"{running.base_url}/uploads/{upload.id}/parts"
    response = httpx.post(url, headers=KEY, files={"other": ("x", b"abc")})
    assert response.status_code == 400 and response.json()["error"]["param"] == "data"
    response = httpx.post(url, headers={**KEY, "Content-Type": "application/octet-stream"}, content=b"abc")
    assert response.status_code == 400 and response.json()["error"]["param"] == "data"
    response = httpx.post(f"{running.base_url}/uploads/upload_nope/parts", headers=KEY, files={"data": b"a"})
    assert response.status_code == 404 and response.json()["error"]["param"] == "upload_id"
    # Without a Content-Length the cap is found while the part streams; a part cut short is not kept either.
    def part(size: int, close: bool = True):
        yield b"--b\r\nContent-Disposition: form-data; name=\"data\"; filename=\"blob\"\r\n\r\n"
        yield b"y" * size
        if close:
            yield b"\r\n--b--\r\n"

    multipart = {**KEY, "Content-Type": "multipart/form-data; boundary=b"}
    response = httpx.post(url, headers=multipart, content=part(11))
    assert response.status_code == 413 and response.json()["error"]["param"] == "data"
    response = httpx.post(url, headers=multipart, content=part(5, close=False))
    assert response.status_code == 400 and response.json()["error"]["param"] == "data"
    # Still pending and empty; cancelled, it takes nothing more.
    assert kept(home)["parts"] in ([], [upload.id])
    assert client.uploads.cancel(upload.id).status == "cancelled"
    with pytest.raises(openai.BadRequestError):
        client.uploads.cancel(upload.id)
    assert kept(home) == {"files": [], "parts": []}


def test_declared_size_at_the_file_limit(running, home):
    """TUNELAB_MAX_FILE_BYTES is 4000: an upload of 3999 or 4000 bytes is made, 4001 refused when declared."""
    client = running.client(max_retries=0)
    for size in (3999, 4000):
        data = b"x" * size
        done = client.uploads.upload_file_chunked(file=data, filename="t.jsonl", bytes=size,
                                                  mime_type="text/jsonl", purpose="fine-tune", part_size=1500)
        assert done.file.bytes == size
    with pytest.raises(openai.BadRequestError) as caught:
        client.uploads.create(bytes=4001, filename="t.jsonl", mime_type="text/jsonl", purpose="fine-tune")
    assert caught.value.body["param"] == "bytes" and "4,000" in caught.value.body["message"]
    assert len(kept(home)["files"]) == 2 and kept(home)["parts"] == []


def test_the_azure_routes_take_uploads_too(running):
    client = openai.AzureOpenAI(azure_endpoint=running.base_url.removesuffix("/v1"), api_key="test-key",
                                api_version="2024-10-21", max_retries=0)
    data = jsonl([chat()])
    done = client.uploads.upload_file_chunked(file=data, filename="t.jsonl", bytes=len(data),
                                              mime_type="text/jsonl", purpose="fine-tune", part_size=64)
    assert done.status == "completed" and done.file.bytes == len(data)


def test_parts_left_by_a_crash_are_removed_at_start(monkeypatch, home):
    """A pending upload keeps its parts across a restart; bytes no part row names (a crash mid-part), and the
    parts of an upload that is over, are removed before the service answers."""
    monkeypatch.setenv("TUNELAB_API_KEY", "test-key")
    with serve_in_thread() as service:
        client = service.client(max_retries=0)
        upload = client.uploads.create(bytes=6, filename="t.jsonl", mime_type="text/jsonl", purpose="fine-tune")
        part = client.uploads.parts.create(upload.id, data=b"abc")
        over = client.uploads.create(bytes=6, filename="t.jsonl", mime_type="text/jsonl", purpose="fine-tune")
        client.uploads.parts.create(over.id, data=b"abc")
    uploads = home / "state" / "uploads"
    (uploads / upload.id / ".tmp-part_0123").write_bytes(b"half")
    (uploads / upload.id / "part_0123").write_bytes(b"orphan")
    (uploads / "upload_gone").mkdir()
    import sqlite3

    with sqlite3.connect(home / "state" / "tunelab.db") as db:  # as if the process died after the status changed
        db.execute("UPDATE uploads SET status = 'cancelled' WHERE id = ?", (over.id,))
    with serve_in_thread() as service:
        assert sorted(str(p.relative_to(uploads)) for p in uploads.rglob("*")) == \
            sorted([upload.id, f"{upload.id}/{part.id}"])
        client = service.client(max_retries=0)
        rest = client.uploads.parts.create(upload.id, data=b"def")
        done = client.uploads.complete(upload.id, part_ids=[part.id, rest.id])
        assert client.files.content(done.file.id).content == b"abcdef"


def test_a_part_may_be_larger_than_a_json_body(monkeypatch, home):
    """Parts are streamed under their own cap, not the 1 MB cap on other request bodies."""
    monkeypatch.setenv("TUNELAB_API_KEY", "test-key")
    with serve_in_thread() as service:
        client = service.client(max_retries=0)
        data = (json.dumps(chat()) + "\n").encode() * 12_000
        assert len(data) > 2 * (1 << 20)
        done = client.uploads.upload_file_chunked(file=data, filename="big.jsonl", bytes=len(data),
                                                  mime_type="text/jsonl", purpose="fine-tune",
                                                  part_size=(1 << 20) + len(data) // 3)
        assert done.file.bytes == len(data)
        assert hashlib.sha256(client.files.content(done.file.id).content).digest() == hashlib.sha256(data).digest()


def test_an_upload_expires_after_its_hour(running, home):
    import sqlite3

    client = running.client(max_retries=0)
    upload = client.uploads.create(bytes=6, filename="t.jsonl", mime_type="text/jsonl", purpose="fine-tune")
    part = client.uploads.parts.create(upload.id, data=b"abc")
    with sqlite3.connect(home / "state" / "tunelab.db") as db:  # the hour has passed
        db.execute("UPDATE uploads SET expires_at = created_at - 1 WHERE id = ?", (upload.id,))
    with pytest.raises(openai.BadRequestError) as caught:
        client.uploads.complete(upload.id, part_ids=[part.id])
    assert caught.value.body["code"] == "upload_not_pending" and "expired" in caught.value.body["message"]
    assert kept(home) == {"files": [], "parts": []}
