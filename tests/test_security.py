"""Nobody in: what the service keeps is its owner's only, secrets stay off command lines and out of children's
environments, and what a hostile client sends (other origins, keys in URLs, crafted file names, endless forms,
big bodies on the wrong path) gets a refusal in the envelope and leaves nothing behind."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
import time
import unicodedata
from pathlib import Path

import httpx2 as httpx
import pytest

from conftest import free_port, serve_in_thread, trainers, varied_chats, write_jsonl

TUNELAB = str(Path(sys.executable).with_name("tunelab"))
KEY = "security-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The real app on a loopback port, its home in a folder of its own (so nothing may appear outside it)."""
    root = tmp_path_factory.mktemp("security")
    with serve_in_thread(home=str(root / "home"), api_key=KEY) as running:
        running.root = root
        running.origin = running.base_url.removesuffix("/v1")
        yield running


def all_files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


# --- keys and origins -------------------------------------------------------------------------------------------

def test_an_unknown_origin_gets_no_cross_origin_answer(server):
    evil = {"Origin": "https://evil.example"}
    preflight = httpx.options(server.base_url + "/files", headers={
        **evil, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"})
    answered = httpx.get(server.base_url + "/models", headers={**evil, **AUTH})
    assert answered.status_code == 200
    for response in (preflight, answered, httpx.get(server.origin + "/", headers=evil)):
        headers = {k.lower() for k in response.headers}
        assert "access-control-allow-origin" not in headers and "access-control-allow-credentials" not in headers


def test_a_key_in_the_query_string_opens_nothing(server):
    for name in ("api_key", "api-key", "key", "token", "access_token", "authorization"):
        for path in ("/v1/models", "/openai/models", "/openai/v1/files", "/openapi.json"):
            response = httpx.get(f"{server.origin}{path}", params={name: KEY})
            assert response.status_code == 401, (name, path)
            assert response.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{server.origin}/v1/models", headers=AUTH).status_code == 200


# --- the JSON body cap ------------------------------------------------------------------------------------------

def test_a_big_json_body_to_any_other_path_ending_in_files_is_refused(server):
    body = json.dumps({"blocklist": ["x" * 1000] * 2000}).encode()  # 2 MB: over the 1 MB cap
    for path in ("/v1/content_filters/files", "/v1/fine_tuning/jobs/ftjob-x/files", "/openai/deployments/files",
                 "/v1/files/file-x/files"):
        for headers in ({"Content-Type": "application/json"},  # with Content-Length, and chunked without it
                        {"Content-Type": "application/json", "Transfer-Encoding": "chunked"}):
            content = body if "Transfer-Encoding" not in headers else iter([body[i:i + 65536]
                                                                            for i in range(0, len(body), 65536)])
            response = httpx.request("PUT" if "content_filters" in path else "POST", server.origin + path,
                                     content=content, headers={**AUTH, **headers})
            assert response.status_code == 413, (path, response.status_code, response.text)
            assert response.json()["error"]["code"] == "request_too_large"
    big_file = b'{"messages": [{"role": "user", "content": "%s"}]}\n' % (b"x" * 1000) * 1500  # 1.5 MB
    for upload in ("/v1/files", "/openai/files", "/openai/v1/files"):  # the upload route and its Azure mirrors
        response = httpx.post(server.origin + upload, content=multipart(b"big.jsonl", big_file), headers=FORM)
        assert response.status_code == 200 and response.json()["bytes"] == len(big_file), (upload, response.text)


# --- uploads ----------------------------------------------------------------------------------------------------

def multipart(filename: bytes, content: bytes = b'{"messages": []}\n', boundary: bytes = b"tunelabboundary") -> bytes:
    """A form built byte by byte, so the file name reaches the server exactly as written here."""
    return (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
            b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="' + filename +
            b'"\r\nContent-Type: application/jsonl\r\n\r\n' + content + b"\r\n--" + boundary + b"--\r\n")


FORM = {"Content-Type": "multipart/form-data; boundary=tunelabboundary", **AUTH}
HOSTILE = [
    b"../../etc/cron.d/x.jsonl",
    b"/abs/path/x.jsonl",
    b"a\x00b/../../x.jsonl",
    b"..\\..\\windows\\x.jsonl",
    "．．／．．／etc／x.jsonl".encode(),  # full-width dots and solidus
    "‥/‥/x.jsonl".encode(),  # the two-dot leader
    "..\u2215..\u2215x.jsonl".encode(),  # division slash
    b"..",
    b"a" * 4090 + b".jsonl",
]


def test_hostile_file_names_are_stored_under_the_generated_id_only(server):
    data = server.root / "home" / "state" / "files"
    before = all_files(server.root)
    for raw in HOSTILE:
        response = httpx.post(server.base_url + "/files", content=multipart(raw), headers=FORM)
        if not raw.endswith(b".jsonl"):
            assert response.status_code == 400 and response.json()["error"]["param"] == "file"
            continue
        assert response.status_code == 200, (raw, response.text)
        stored = response.json()
        name = stored["filename"]
        folded = unicodedata.normalize("NFKC", name)
        assert not any(c in folded for c in "/\\\0") and not folded.startswith("."), (raw, name)
        assert len(name) <= 255 and name.endswith(("x.jsonl", "a"))
        assert (data / stored["id"]).is_file()
        assert httpx.get(server.base_url + f"/files/{stored['id']}", headers=AUTH).json()["filename"] == name
    created = all_files(server.root) - before - {data}  # the folder itself comes with the first upload
    assert created and all(p.parent == data and p.name.startswith("file-") for p in created), created


def test_form_limits_answer_quickly(server):
    def send(body: bytes) -> httpx.Response:
        started = time.monotonic()
        response = httpx.post(server.base_url + "/files", content=body, headers=FORM, timeout=30)
        assert time.monotonic() - started < 5
        return response

    part = b'--tunelabboundary\r\nContent-Disposition: form-data; name="f"\r\n\r\nv\r\n'
    many = send(part * 10_000 + b"--tunelabboundary--\r\n")
    assert many.status_code == 400 and "too many parts" in many.json()["error"]["message"]

    field = (b'--tunelabboundary\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n' + b"x" * (8 << 20) +
             b"\r\n--tunelabboundary--\r\n")
    large = send(field)
    assert large.status_code == 413 and large.json()["error"]["param"] == "purpose"

    opening = b'--tunelabboundary\r\nContent-Disposition: form-data; name="file"; filename="x.jsonl"\r\n'
    many_headers = opening + b"".join(b"X-More-%d: %s\r\n" % (i, b"h" * 200) for i in range(20_000))
    one_endless_header = opening + b"X-Padding: " + b"h" * (4 << 20)
    for endless in (many_headers, one_endless_header):
        refused = send(endless)
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "file", refused.text
    assert not any(p.name.startswith(".tmp-") for p in (server.root / "home" / "state" / "files").iterdir())


# --- a private home, and secrets that stay where they are -------------------------------------------------------

def trainer_of(job_id: str, deadline: float) -> int:
    while time.monotonic() < deadline:
        if found := trainers(job_id):
            return found[0]
        time.sleep(0.02)
    raise AssertionError(f"no trainer started for {job_id}")


def import_private(model: Path, home: Path) -> None:
    """`tunelab models import`, in this process under the umask every tunelab entry point sets."""
    from tunelab.models.catalog import import_model
    from tunelab.store.home import PRIVATE_UMASK

    old = os.umask(PRIVATE_UMASK)
    try:
        import_model(model, "tiny")
    finally:
        os.umask(old)


def test_the_home_is_private_and_the_trainer_gets_no_secret(monkeypatch, tmp_path, tiny_model):
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    home.chmod(0o755)  # a home an earlier version left open
    monkeypatch.setenv("TUNELAB_HOME", str(home))
    env = {**os.environ, "TUNELAB_HOME": str(home), "TUNELAB_API_KEY": KEY, "OPENAI_API_KEY": "sk-decoy-secret",
           "HF_TOKEN": "hf_decoy_secret", "TUNELAB_LEASE_SECONDS": "5"}
    import_private(tiny_model, home)
    port = free_port()
    log = (tmp_path / "serve.log").open("wb")
    server = subprocess.Popen([TUNELAB, "serve", "--port", str(port)], env=env, stdout=log, stderr=log)
    try:
        http = httpx.Client(base_url=f"http://127.0.0.1:{port}/v1", headers=AUTH, timeout=30)
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            try:
                http.get("/models")
                break
            except httpx.TransportError:
                time.sleep(0.1)
        path = write_jsonl(tmp_path / "train.jsonl", varied_chats(10))
        file_id = http.post("/files", files={"file": ("train.jsonl", path.read_bytes())},
                            data={"purpose": "fine-tune"}).json()["id"]
        job = http.post("/fine_tuning/jobs", json={"model": "tiny", "training_file": file_id, "seed": 1,
                                                    "hyperparameters": {"n_epochs": 1, "batch_size": 4}}).json()
        pid = trainer_of(job["id"], time.monotonic() + 60)
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        environ = dict(item.split(b"=", 1) for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                       if b"=" in item)
        with sqlite3.connect(f"file:{home / 'state' / 'tunelab.db'}?mode=ro", uri=True) as db:
            token = db.execute("SELECT lease_token FROM jobs WHERE id = ?", (job["id"],)).fetchone()[0]
        assert token and token.encode() not in cmdline, cmdline
        assert environ[b"TUNELAB_HOME"] == str(home).encode()  # the environment was read, and is the trainer's
        for name in (b"TUNELAB_API_KEY", b"OPENAI_API_KEY", b"HF_TOKEN"):
            assert name not in environ, name
        everything = b"\0".join(environ.values())
        assert KEY.encode() not in everything and b"decoy" not in everything and token.encode() not in everything

        while (status := http.get(f"/fine_tuning/jobs/{job['id']}").json()["status"]) not in (
                "succeeded", "failed", "cancelled"):
            assert time.monotonic() < deadline + 60
            time.sleep(0.2)
        assert status == "succeeded"
        for live in ("tunelab.db-wal", "tunelab.db-shm"):  # SQLite removes these when the server closes it
            assert stat.S_IMODE((home / "state" / live).stat().st_mode) == 0o600, live
    finally:
        server.terminate()
        server.wait(60)
        log.close()

    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    names = []
    for p in home.rglob("*"):
        mode = stat.S_IMODE(p.lstat().st_mode)
        assert mode == (0o700 if p.is_dir() else 0o600), (p, oct(mode))
        names.append(p.name)
    # Not an empty walk: the database and its log, an upload, a job's log, checkpoints, adapter and results.csv.
    for expected in ("tunelab.db", f"{job['id']}.log", "results.csv", "adapter_model.safetensors"):
        assert expected in names, (expected, sorted(set(names)))
    assert file_id in names and any("checkpoint" in n for n in names), sorted(set(names))
