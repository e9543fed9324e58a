"""Deployments served by an engine other than tunelab's own: a real `llama-server` (built by `make llamacpp`) that
the service starts, watches and stops, and an engine URL. Everything the SDK sees stays tunelab's: streaming,
usage, finish reasons, the rate limit, the content filter, errors in the OpenAI envelope."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx2 as httpx
import openai
import pytest

import tiny_models
from conftest import free_port, serve_in_thread
from test_chat import ASK
from test_cli import tunelab
from test_deployments import wait_until_provisioned

LLAMA_SERVER = next((Path(p) for p in (os.environ.get("TUNELAB_LLAMA_SERVER"),
                                       Path(sys.executable).parent / "llama-server", shutil.which("llama-server"))
                     if p and Path(p).is_file()), None)  # where the service looks for it
needs_llama_server = pytest.mark.skipif(LLAMA_SERVER is None, reason="llama-server is not installed: run "
                                        "`make llamacpp` (it builds llama.cpp's server beside this Python)")
HTTP = {"Authorization": "Bearer test-key"}


def deploy(http, base_url, name, model, *, engine=None, capacity=100, policy="None"):
    properties = {"model": {"format": "OpenAI", "name": model}, "raiPolicyName": policy}
    if engine is not None:
        properties["engine"] = engine
    return http.put(f"{base_url}/deployments/{name}", json={"sku": {"name": "Standard", "capacity": capacity},
                                                            "properties": properties})


def provisioned(http, base_url, name, timeout=120) -> str:
    """The deployment's state once it is no longer Creating; a failure says why."""
    state = wait_until_provisioned(http, base_url, name, timeout)
    assert state == "Succeeded", http.get(f"{base_url}/deployments/{name}").json()["properties"]["error"]
    return state


def engine_of(http, base_url, name) -> dict:
    return http.get(f"{base_url}/deployments/{name}").json()["properties"]["engine"]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]


@pytest.fixture
def fp32_decode(monkeypatch):
    """tunelab's engine decoding with fp32 weights (not int8 rows), to compare with llama.cpp's f16 GGUF."""
    monkeypatch.setenv("TUNELAB_DECODE_WEIGHTS", "fp32")


def completions_served(log: Path) -> int:
    """Requests the llama-server behind a deployment has taken into a slot, from its log."""
    return log.read_text(errors="replace").count("launch_slot_") if log.exists() else 0


def test_a_bad_engine_is_refused_naming_the_field(service, capsys, monkeypatch):
    http = httpx.Client(headers=HTTP)
    for engine, param in (({"type": "tgi"}, "properties.engine.type"),
                          ({"type": "url"}, "properties.engine.url"),
                          ({"type": "url", "url": "ftp://host:1"}, "properties.engine.url"),
                          ({"type": "url", "url": "http://127.0.0.1:9", "kind": "ollama"}, "properties.engine.kind"),
                          ({"type": "llama.cpp", "url": "http://127.0.0.1:9"}, "properties.engine.url"),
                          ({"type": "local", "port": 1}, "properties.engine.port"),
                          ("llama.cpp", "properties.engine")):
        refused = deploy(http, service.base_url, "bad", "tiny", engine=engine)
        assert refused.status_code == 400, engine
        assert refused.json()["error"]["param"] == param, (engine, refused.json())
    monkeypatch.setenv("TUNELAB_BASE_URL", service.base_url.removesuffix("/v1"))
    code, output = tunelab(capsys, "deploy", "tiny", "--name", "bad", "--engine", "tgi")
    assert code == 2 and "properties.engine.type" in output and "llama.cpp" in output
    assert http.get(f"{service.base_url}/deployments").json()["value"] == []  # nothing half-made


def test_an_engine_url_that_is_down_fails_the_deployment_and_says_where(service, monkeypatch):
    http = httpx.Client(headers=HTTP)
    url = f"http://127.0.0.1:{free_port()}"
    refused = deploy(http, service.base_url, "away", "tiny", engine={"type": "url", "url": url})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "properties.engine.url"
    assert "TUNELAB_ENGINE_URLS" in refused.json()["error"]["message"]  # only URLs the operator listed
    monkeypatch.setenv("TUNELAB_ENGINE_URLS", f"http://127.0.0.1:1,{url}")
    assert deploy(http, service.base_url, "away", "tiny", engine={"type": "url", "url": url}).status_code == 201
    assert wait_until_provisioned(http, service.base_url, "away") == "Failed"
    shown = http.get(f"{service.base_url}/deployments/away").json()["properties"]
    assert url in shown["error"] and "away" in shown["error"]
    assert shown["engine"] == {"type": "url", "url": url, "kind": None}


def same_answers(service, on_engine: str, on_local: str) -> None:
    """Deployment `on_engine` answers as `on_local` (tunelab's engine) does, greedy: through the stock SDK and
    AzureOpenAI, whole and streamed, with the same usage and finish reasons."""
    client = service.client()
    ask = dict(messages=ASK, max_tokens=12, temperature=0)
    engine = client.chat.completions.create(model=on_engine, **ask)
    local = client.chat.completions.create(model=on_local, **ask)
    assert engine.choices[0].message.content == local.choices[0].message.content
    assert engine.choices[0].finish_reason == local.choices[0].finish_reason
    assert (engine.usage.prompt_tokens, engine.usage.completion_tokens) == \
        (local.usage.prompt_tokens, local.usage.completion_tokens)
    text = engine.choices[0].message.content

    chunks = list(client.chat.completions.create(model=on_engine, stream=True, stream_options={"include_usage": True},
                                                 **ask))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == engine.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == engine.usage.completion_tokens

    short = client.chat.completions.create(model=on_engine, messages=ASK, max_tokens=3, temperature=0)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 3

    azure = openai.AzureOpenAI(azure_endpoint=service.base_url.removesuffix("/v1"), api_key="test-key",
                               api_version="2024-10-21")
    assert azure.chat.completions.create(model=on_engine, **ask).choices[0].message.content == text
    streamed = list(azure.chat.completions.create(model=on_engine, stream=True, **ask))
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == text


@pytest.mark.slow
@needs_llama_server
def test_a_fine_tune_on_llama_cpp_answers_as_on_the_local_engine(fp32_decode, tuned):
    """A fine-tune on llama-server (its f16 GGUF: the base with the LoRA adapter where tunelab writes LoRA GGUFs,
    else the merged fine-tune) gives the local engine's greedy answers (fp32)."""
    service, model = tuned
    http = httpx.Client(headers=HTTP)
    assert deploy(http, service.base_url, "ft-cpp", model, engine={"type": "llama.cpp"}).status_code == 201
    assert deploy(http, service.base_url, "ft-local", model).status_code == 201
    provisioned(http, service.base_url, "ft-cpp")
    provisioned(http, service.base_url, "ft-local")
    engine = engine_of(http, service.base_url, "ft-cpp")
    try:
        import tunelab.export.gguf_lora  # noqa: F401
        assert engine["gguf"].endswith("-f16.gguf") and len(engine["loras"]) == 1  # the base, with the adapter
    except ImportError:
        assert engine["loras"] == []  # the merged fine-tune
    same_answers(service, "ft-cpp", "ft-local")
    ask = dict(messages=ASK, max_tokens=12, temperature=0)
    tuned_answer = service.client().chat.completions.create(model="ft-cpp", **ask).choices[0].message.content
    assert tuned_answer != service.client().chat.completions.create(model="tiny", **ask).choices[0].message.content


@needs_llama_server
def test_limits_filter_and_a_killed_engine_on_llama_cpp(monkeypatch, tiny_model, home, capsys, tmp_path):
    """tunelab's limiter answers 429 without calling the engine; the content filter vets the streamed answer;
    kill -9 of llama-server mid-stream ends the stream with an error the SDK raises, the watcher restarts the
    server and the next request is answered; an engine URL that stops answering is a clear 503; the service's
    stop stops every engine it started."""
    from tunelab.models.catalog import import_model

    monkeypatch.setenv("TUNELAB_API_KEY", "test-key")
    monkeypatch.setenv("TUNELAB_DECODE_WEIGHTS", "fp32")  # to compare with llama.cpp's f16 GGUF
    import_model(tiny_model, "tiny")
    # A wider model, for an answer that takes llama.cpp seconds (the tiny one's takes it milliseconds): long
    # enough to be cut by a kill.
    import_model(tiny_models.build("llama", tmp_path / "wide", hidden=512, layers=4), "wide")
    with serve_in_thread() as service:
        monkeypatch.setenv("TUNELAB_BASE_URL", service.base_url.removesuffix("/v1"))
        pids = check_limits_filter_and_a_killed_engine(service, home, capsys)
    assert not any(alive(pid) for pid in pids)


def check_limits_filter_and_a_killed_engine(service, home, capsys) -> list[int]:
    http = httpx.Client(headers=HTTP)
    client = service.client(max_retries=0)
    assert deploy(http, service.base_url, "base-cpp", "tiny", engine={"type": "llama.cpp"},
                  capacity=1).status_code == 201
    assert deploy(http, service.base_url, "base-local", "tiny").status_code == 201
    code, output = tunelab(capsys, "deploy", "tiny", "--name", "open-cpp", "--tpm", "100", "--content-filter",
                           "None", "--engine", "llama.cpp")
    engine = engine_of(http, service.base_url, "open-cpp")
    assert code == 0 and f"open-cpp: Succeeded (tiny, 100K tokens per minute, content filter None, on llama.cpp " \
        f"(pid {engine['pid']}, port {engine['port']}))" in output, output
    for name in ("base-cpp", "base-local"):
        provisioned(http, service.base_url, name)
    assert engine["type"] == "llama.cpp" and engine["state"] == "Running" and engine["restarts"] == 0
    assert alive(engine["pid"]) and engine["port"] > 0
    assert engine_of(http, service.base_url, "base-local") == {"type": "local"}
    same_answers(service, "open-cpp", "base-local")
    log = Path(engine_of(http, service.base_url, "base-cpp")["log"])

    # The limit: 1K tokens per minute, 6 requests per minute; a request asking more than is left is refused
    # before it reaches the engine.
    client.chat.completions.create(model="base-cpp", messages=ASK, max_tokens=600, temperature=0)
    served = completions_served(log)
    assert served >= 2  # the warm-up and that answer
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="base-cpp", messages=ASK, max_tokens=600, temperature=0)
    assert int(caught.value.response.headers["Retry-After"]) >= 1
    assert completions_served(log) == served  # the engine was never asked

    # The content filter, on the completion streamed from the engine: a custom blocklist holding a word of the
    # answer stops the stream before that word leaves.
    text = client.chat.completions.create(model="open-cpp", messages=ASK, max_tokens=40,
                                          temperature=0).choices[0].message.content
    word = max(text.split(), key=len)
    assert http.put(f"{service.base_url}/content_filters/no-word", json={"blocklist": [word]}).status_code == 200
    assert deploy(http, service.base_url, "guarded-cpp", "tiny", engine={"type": "llama.cpp"},
                  policy="no-word").status_code == 201
    provisioned(http, service.base_url, "guarded-cpp")
    chunks = [c.to_dict() for c in client.chat.completions.create(model="guarded-cpp", messages=ASK, max_tokens=40,
                                                                  temperature=0, stream=True)]
    streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert word not in streamed
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "content_filter"

    # kill -9 mid-stream: the SDK raises (no hang), the watcher restarts the server, the next request succeeds.
    assert deploy(http, service.base_url, "wide-cpp", "wide", engine={"type": "llama.cpp"}).status_code == 201
    provisioned(http, service.base_url, "wide-cpp")
    engine = engine_of(http, service.base_url, "wide-cpp")
    long = dict(model="wide-cpp", messages=ASK, max_tokens=400, temperature=0)
    started = time.monotonic()
    assert client.chat.completions.create(**long).usage.completion_tokens == 400
    assert time.monotonic() - started > 0.2  # long enough to be cut (the first chunk comes in milliseconds)
    stream = client.chat.completions.create(**long, stream=True)
    killed = threading.Event()
    with pytest.raises(openai.APIError) as cut:
        for chunk in stream:  # the first chunk comes once the engine has taken the request: kill it then
            if not killed.is_set():
                os.kill(engine["pid"], signal.SIGKILL)
                killed.set()
    assert killed.is_set() and "wide-cpp" in str(cut.value.message) and "llama.cpp" in str(cut.value.message)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        now = engine_of(http, service.base_url, "wide-cpp")
        if now["state"] == "Running" and now["restarts"] == 1:
            break
        time.sleep(0.1)
    assert now["state"] == "Running" and now["restarts"] == 1 and now["pid"] != engine["pid"]
    assert now["lastExit"] == -signal.SIGKILL
    assert client.chat.completions.create(model="wide-cpp", messages=ASK, max_tokens=4).usage.completion_tokens

    # An engine URL someone else runs (here: a llama-server started by hand on the same GGUF) that goes away.
    gguf = next((home / "engines" / "gguf").glob("tiny/*.gguf"))
    port = free_port()
    own = subprocess.Popen([str(LLAMA_SERVER), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        os.environ["TUNELAB_ENGINE_URLS"] = url  # the operator allows it (removed below)
        assert deploy(http, service.base_url, "theirs", "tiny",
                      engine={"type": "url", "url": url}).status_code == 201
        provisioned(http, service.base_url, "theirs")
        assert engine_of(http, service.base_url, "theirs")["kind"] == "llama.cpp"  # asked of the engine
        direct = client.chat.completions.create(model="theirs", messages=ASK, max_tokens=8, temperature=0)
        assert direct.choices[0].message.content == client.chat.completions.create(
            model="open-cpp", messages=ASK, max_tokens=8, temperature=0).choices[0].message.content
    finally:
        os.environ.pop("TUNELAB_ENGINE_URLS", None)
        own.kill()
        own.wait()
    with pytest.raises(openai.InternalServerError) as down:
        client.chat.completions.create(model="theirs", messages=ASK, max_tokens=4)
    assert down.value.status_code == 503 and down.value.response.headers["Retry-After"]
    assert "theirs" in down.value.message and url in down.value.message
    with pytest.raises(openai.InternalServerError):
        list(client.chat.completions.create(model="theirs", messages=ASK, max_tokens=4, stream=True))

    # Deleting a deployment stops its server; the service's stop stops the others.
    gone = engine_of(http, service.base_url, "base-cpp")["pid"]
    assert http.delete(f"{service.base_url}/deployments/base-cpp").status_code == 204
    assert not alive(gone)
    pids = [engine_of(http, service.base_url, n)["pid"] for n in ("open-cpp", "guarded-cpp", "wide-cpp")]
    assert all(alive(pid) for pid in pids)
    return pids


@pytest.mark.slow
@needs_llama_server
def test_an_engine_left_behind_by_a_killed_service_is_stopped_at_its_next_start(monkeypatch, tiny_model, home):
    """kill -9 of `tunelab serve` leaves its llama-server running (nothing could stop it); the next start stops
    that server, provisions the deployment again on a new one, and SIGTERM stops everything."""
    from tunelab.models.catalog import import_model

    monkeypatch.setenv("TUNELAB_API_KEY", "test-key")
    import_model(tiny_model, "tiny")
    port = free_port()
    base_url = f"http://127.0.0.1:{port}/v1"
    http = httpx.Client(headers=HTTP)

    def serve() -> subprocess.Popen:
        started = subprocess.Popen([sys.executable, "-c", "from tunelab.cli.main import main; main()", "serve",
                                    "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    return started
            except httpx.HTTPError:
                time.sleep(0.2)
        started.kill()
        raise AssertionError("tunelab serve did not start")

    first = serve()
    try:
        assert deploy(http, base_url, "kept-cpp", "tiny", engine={"type": "llama.cpp"}).status_code == 201
        provisioned(http, base_url, "kept-cpp")
        left = engine_of(http, base_url, "kept-cpp")["pid"]
    finally:
        first.kill()
        first.wait()
    assert alive(left)  # killed at once, the service could stop nothing
    second = serve()
    try:
        provisioned(http, base_url, "kept-cpp")
        now = engine_of(http, base_url, "kept-cpp")["pid"]
        assert now != left and alive(now) and not alive(left)
        answer = openai.OpenAI(base_url=base_url, api_key="test-key").chat.completions.create(
            model="kept-cpp", messages=ASK, max_tokens=4)
        assert answer.usage.completion_tokens >= 1
    finally:
        second.terminate()
        second.wait(60)
    assert not alive(now)
