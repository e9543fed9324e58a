"""The engines a deployment can run on besides the in-process one: a `llama-server` or a vLLM server that tunelab
starts, watches and stops, or an engine URL someone already runs.

    PUT /v1/deployments/ft-travel  {..., "properties": {"model": {...}, "engine": {"type": "llama.cpp"}}}

A deployment's engine is `local` (the default: tunelab's own, engine.py), `llama.cpp`, `vllm` or `url`. For
llama.cpp tunelab exports the base model to GGUF once (f16, cached under $TUNELAB_HOME/engines/gguf/) and the
fine-tune's LoRA adapter beside it (or, where no LoRA writer is installed, the merged fine-tune), then runs
`llama-server` on a free loopback port with one slot per concurrent answer. For vLLM it runs `vllm serve` on the
base model's directory with `--enable-lora` and loads the fine-tune's PEFT adapter at run time. Each owned process
is checked ready on `/health`, restarted when it dies (a bounded number of times, with growing pauses; its log is
$TUNELAB_HOME/engines/logs/<deployment>.log) and stopped when the deployment is deleted or the service stops.
Requests reach any of them through `RemoteEngine` (inference/remote.py).
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

from ..config import get_settings
from ..errors import InvalidRequest
from ..inference.pool import EnginePool, Target
from ..inference.remote import KINDS, RemoteEngine, call
from ..models.registry import Registry

TYPES = ("local", "llama.cpp", "vllm", "url")
LLAMA_PARALLEL = 4  # llama-server slots: answers decoded together, each with the model's whole context
MAX_RESTARTS = 5  # restarts in a row of a server that dies soon after starting; then it stays down (Failed)
STABLE_SECONDS = 60.0  # a server that ran this long before it died starts over with the shortest pause
RESTART_PAUSES = (0.5, 1, 2, 4, 8)  # seconds before the 1st, 2nd, … restart in a row

log = logging.getLogger("tunelab.deploy.engines")


@dataclass
class EngineSpec:
    """What a deployment asked for: `type` and, for `url`, the address and (optionally) what runs there."""

    type: str = "local"
    url: str | None = None
    kind: str | None = None  # url only: llama.cpp | vllm; None: asked of the engine when provisioning

    @classmethod
    def parse(cls, value) -> "EngineSpec":
        """`properties.engine` of a deployment request, checked, every error naming its field."""
        if value is None:
            return cls()
        if not isinstance(value, dict):
            raise InvalidRequest("properties.engine is an object such as {\"type\": \"llama.cpp\"}",
                                 param="properties.engine")
        unknown = sorted(set(value) - {"type", "url", "kind"})
        if unknown:
            raise InvalidRequest(f"unknown field properties.engine.{unknown[0]}; an engine has type, url and kind",
                                 param=f"properties.engine.{unknown[0]}")
        kind_of = value.get("type", "local")
        if kind_of not in TYPES:
            raise InvalidRequest(f"properties.engine.type {kind_of!r} is not an engine tunelab runs; choose one of "
                                 f"{', '.join(TYPES)}",
                                 param="properties.engine.type")
        url, kind = value.get("url"), value.get("kind")
        if kind_of != "url":
            for field in ("url", "kind"):
                if value.get(field) is not None:
                    raise InvalidRequest(f"properties.engine.{field} applies to engines of type 'url' only",
                                         param=f"properties.engine.{field}")
            return cls(kind_of)
        if not isinstance(url, str) or not url:
            raise InvalidRequest("an engine of type 'url' needs properties.engine.url, e.g. http://host:8080",
                                 param="properties.engine.url")
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname or parsed.path.rstrip("/") not in ("", "/v1"):
            raise InvalidRequest(f"properties.engine.url must be the engine's address, http(s)://host:port; got "
                                 f"{url!r}", param="properties.engine.url")
        if kind is not None and kind not in KINDS:
            raise InvalidRequest(f"properties.engine.kind {kind!r} is not an engine tunelab speaks to; choose one of "
                                 f"{', '.join(KINDS)}, or leave it out to ask the engine",
                                 param="properties.engine.kind")
        address = url.rstrip("/").removesuffix("/v1")
        allowed = {u.rstrip("/").removesuffix("/v1") for u in get_settings().engine_urls}
        if address not in allowed:  # an API key must not be able to point the service at any host it can reach
            raise InvalidRequest(f"properties.engine.url {url!r} is not an engine this service may use; its operator "
                                 "lists the allowed ones in TUNELAB_ENGINE_URLS", param="properties.engine.url")
        return cls("url", address, kind)

    def shown(self) -> dict:
        return {"type": self.type, **({"url": self.url, "kind": self.kind} if self.type == "url" else {})}


class EngineProcess:
    """A server process tunelab owns: started on a free loopback port, ready when `/health` answers 200, restarted
    by a watcher thread when it dies, stopped (its whole process group) on `stop()`."""

    def __init__(self, label: str, command: Callable[[int], list[str]], log_path: Path, *, env: dict | None = None,
                 start_timeout: float = 120.0, on_ready: Callable[[str], None] = lambda url: None,
                 on_gave_up: Callable[[str], None] = lambda why: None):
        self.label, self.command, self.log_path, self.env = label, command, log_path, env
        self.start_timeout, self.on_ready, self.on_gave_up = start_timeout, on_ready, on_gave_up
        self.state, self.restarts, self.last_exit, self.started_at = "Starting", 0, None, 0.0
        self.port = _free_port()
        self.process: subprocess.Popen | None = None
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def shown(self) -> dict:
        return {"state": self.state, "pid": self.process.pid if self.process else None, "port": self.port,
                "restarts": self.restarts, "lastExit": self.last_exit, "log": str(self.log_path)}

    def start(self) -> None:
        """Start and wait until ready (raises RuntimeError with the log's tail); then watch it."""
        self._spawn_ready()
        self.state = "Running"
        self.on_ready(self.url)
        self._watcher = threading.Thread(target=self._watch, name=f"tunelab-watch-{self.label}", daemon=True)
        self._watcher.start()

    def _spawn_ready(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            out.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting on port {self.port}\n".encode())
            out.flush()
            # A session of its own: stop() ends the server and any workers it forked (vLLM's) together.
            argv = self.command(self.port)
            self.process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env={**os.environ, **(self.env or {})},
                                            start_new_session=True)
        self.pid_path.write_text(json.dumps({"pid": self.process.pid, "argv": argv}))
        deadline = time.monotonic() + self.start_timeout
        self.started_at = time.monotonic()
        while not self._healthy():
            if self._stopping.is_set():
                raise RuntimeError(f"{self.label} was stopped while starting")
            if self.process.poll() is not None or time.monotonic() > deadline:
                why = (f"exited with status {self.process.returncode}" if self.process.poll() is not None
                       else f"was not ready within {self.start_timeout:g} s")
                self._kill()
                raise RuntimeError(f"{self.label} {why}; its log ends with: {_tail(self.log_path)}")
            time.sleep(0.1)
        self.started_at = time.monotonic()

    def _healthy(self) -> bool:
        try:
            return call(self.url, "GET", "/health", timeout=2)[0] == 200
        except (OSError, http.client.HTTPException):
            return False

    def _watch(self) -> None:
        """Restart the server each time it dies, after a pause that grows while it keeps dying soon after its
        start; give up (state Failed) after MAX_RESTARTS such restarts in a row."""
        quick = 0  # exits in a row, each within STABLE_SECONDS of its start (or failed starts)
        while not self._stopping.is_set():
            code = self.process.wait()
            if self._stopping.is_set():
                return
            self.last_exit, self.state = code, "Restarting"
            quick = quick + 1 if time.monotonic() - self.started_at < STABLE_SECONDS else 1
            while True:
                if quick > MAX_RESTARTS:
                    self.state = "Failed"
                    why = f"{self.label} exited (status {code}) and did not stay up after {MAX_RESTARTS} restarts"
                    log.error("%s; its log: %s", why, self.log_path)
                    self.on_gave_up(why)
                    return
                pause = RESTART_PAUSES[min(quick, len(RESTART_PAUSES)) - 1]
                log.warning("%s (pid %d) exited with status %s; restarting in %g s", self.label, self.process.pid,
                            code, pause)
                if self._stopping.wait(pause):
                    return
                self.restarts += 1
                try:
                    self._spawn_ready()
                    self.on_ready(self.url)
                except (RuntimeError, OSError, http.client.HTTPException) as exc:
                    log.warning("%s did not restart: %s", self.label, exc)
                    self._kill()
                    self.port = _free_port()  # in case another program took the port meanwhile
                    quick += 1
                    continue
                break
            self.state = "Running"
            log.warning("%s is running again (pid %d, port %d; restart %d)", self.label, self.process.pid, self.port,
                        self.restarts)

    @property
    def pid_path(self) -> Path:
        return self.log_path.with_suffix(".pid")

    def end_leftover(self) -> None:
        """A server an earlier run of the service started and could not stop (it was killed itself): stop it,
        if the process recorded is still that server."""
        try:
            recorded = json.loads(self.pid_path.read_text())
            argv = Path(f"/proc/{recorded['pid']}/cmdline").read_bytes().split(b"\0")[:-1]
        except (OSError, ValueError, KeyError, TypeError):
            return
        if [a.decode(errors="replace") for a in argv] == recorded["argv"]:
            log.warning("%s: stopping the server an earlier run left behind (pid %d)", self.label, recorded["pid"])
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(recorded["pid"], sig)
                except (ProcessLookupError, PermissionError):
                    break
                deadline = time.monotonic() + 10
                while Path(f"/proc/{recorded['pid']}").exists() and time.monotonic() < deadline:
                    time.sleep(0.1)
        self.pid_path.unlink(missing_ok=True)

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self._kill(timeout)
        self.pid_path.unlink(missing_ok=True)
        self.state = "Stopped"
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join(timeout)

    def _kill(self, timeout: float = 10.0) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                return
            try:
                process.wait(timeout)
                return
            except subprocess.TimeoutExpired:
                continue


class Engines:
    """The engines deployments run on, by deployment name: the process tunelab owns (if any) and the
    RemoteEngine requests go to, with the Target the chat service submits through."""

    def __init__(self, registry: Registry, pool: EnginePool, home: Path, *, llama_server: Path | None = None,
                 vllm_command: str = "vllm", start_timeout: float = 120.0):
        self.registry, self.pool, self.root = registry, pool, home.expanduser() / "engines"
        self.llama_server, self.vllm_command, self.start_timeout = llama_server, vllm_command, start_timeout
        self.targets: dict[str, Target] = {}
        self.processes: dict[str, EngineProcess] = {}
        self.files: dict[str, dict] = {}  # by deployment: the GGUF files its llama-server loads
        self._exports = threading.Lock()  # one GGUF export at a time: two deployments of a base share its file

    def check(self, spec: EngineSpec) -> None:
        """Refuse, at the request, an engine this machine cannot start."""
        if spec.type == "llama.cpp" and self.llama_server_binary() is None:
            raise InvalidRequest("properties.engine.type 'llama.cpp': llama-server was not found (beside this "
                                 "Python, on the PATH, or at TUNELAB_LLAMA_SERVER); install llama.cpp's server, or "
                                 "use engine type 'local'",
                                 param="properties.engine.type")
        if spec.type == "vllm" and shutil.which(self.vllm_command.split()[0]) is None:
            raise InvalidRequest(f"properties.engine.type 'vllm': the vLLM command {self.vllm_command!r} was not "
                                 "found (TUNELAB_VLLM_COMMAND); install vLLM on a GPU machine, or use another engine "
                                 "type",
                                 param="properties.engine.type")

    def llama_server_binary(self) -> Path | None:
        for candidate in (self.llama_server, Path(sys.executable).parent / "llama-server",
                          shutil.which("llama-server")):
            if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
                return Path(candidate)
        return None

    def open(self, name: str, spec: EngineSpec, model_id: str,
             on_gave_up: Callable[[str], None] = lambda why: None) -> Target:
        """Start (or reach) the engine for deployment `name` serving `model_id`; slow: run it off the event loop.
        Raises with a message for the deployment's `error` when it cannot."""
        self.stop(name)
        model, tokenizer, end_ids, end_strings = self.pool.describe(model_id)
        context = int(model.meta.get("context_length") or _config(model.path).get("max_position_embeddings")
                      or 2048)
        label = f"the {spec.kind or spec.type} engine of deployment {name!r}"
        if spec.type == "url":
            engine = self._reach(spec, model_id, tokenizer, context, label)
        elif spec.type == "llama.cpp":
            engine = self._llama_cpp(name, model_id, tokenizer, context, label, on_gave_up)
        else:
            engine = self._vllm(name, model_id, model, tokenizer, context, label, on_gave_up)
        adapter = model_id if model_id in engine.adapters else None
        target = Target(engine, adapter, tokenizer, end_ids, end_strings)
        self.targets[name] = target
        return target

    def target(self, name: str) -> Target | None:
        return self.targets.get(name)

    def shown(self, name: str) -> dict | None:
        process = self.processes.get(name)
        target = self.targets.get(name)
        if process is not None:
            return {**process.shown(), **self.files.get(name, {})}
        if target is not None:
            return {"state": "Reachable", "url": target.engine.url, "kind": target.engine.kind}
        return None

    def stop(self, name: str) -> None:
        target = self.targets.pop(name, None)
        process = self.processes.pop(name, None)
        self.files.pop(name, None)
        if process is not None:
            process.stop()
        if target is not None:
            target.engine.close()

    def close(self) -> None:
        """At the service's stop: every engine process ends with it."""
        for name in list(set(self.processes) | set(self.targets)):
            self.stop(name)

    # --- each engine ---

    def _reach(self, spec: EngineSpec, model_id: str, tokenizer, context: int, label: str) -> RemoteEngine:
        """An engine someone else runs: what it is (asked of it when not given), its context, its model's name."""
        try:
            status, content = call(spec.url, "GET", "/v1/models")
            listed = json.loads(content).get("data") or [] if status == 200 else None
        except (OSError, http.client.HTTPException, ValueError, AttributeError) as exc:
            raise RuntimeError(f"{label} at {spec.url} did not answer GET /v1/models: {exc}") from None
        if listed is None:
            raise RuntimeError(f"{label} at {spec.url} answered GET /v1/models with HTTP {status}")
        kind = spec.kind or ("vllm" if any(m.get("owned_by") == "vllm" for m in listed) else "llama.cpp")
        served = listed[0]["id"] if listed else "tunelab"
        limits = [m.get("max_model_len") or (m.get("meta") or {}).get("n_ctx") for m in listed]
        context = min([context, *[int(v) for v in limits if v]])
        engine = RemoteEngine(spec.url, kind, tokenizer=tokenizer, context=context,
                              label=label.replace(f"{spec.kind or spec.type} engine", f"{kind} engine"),
                              served=served)
        if kind == "vllm" and any(m["id"] == model_id for m in listed):
            engine.adapters[model_id] = model_id  # the adapter is already loaded there under the model id
        return engine

    def _llama_cpp(self, name: str, model_id: str, tokenizer, context: int, label: str,
                   on_gave_up: Callable[[str], None]) -> RemoteEngine:
        binary = self.llama_server_binary()
        if binary is None:
            raise RuntimeError("llama-server was not found")
        model_file, loras = self.gguf_files(model_id)
        self.files[name] = {"gguf": str(model_file), "loras": [str(path) for path in loras]}
        engine = RemoteEngine("http://127.0.0.1:0", "llama.cpp", tokenizer=tokenizer, context=context, label=label,
                              adapters={model_id: 0} if loras else None)

        def command(port: int) -> list[str]:
            lora_args = [arg for path in loras for arg in ("--lora", str(path))]
            return [str(binary), "-m", str(model_file), *lora_args,
                    *(["--lora-init-without-apply"] if loras else []),
                    "--host", "127.0.0.1", "--port", str(port), "--ctx-size", str(context * LLAMA_PARALLEL),
                    "--parallel", str(LLAMA_PARALLEL), "--no-webui"]

        self._own(name, label, command, engine, on_gave_up)
        return engine

    def _vllm(self, name: str, model_id: str, model, tokenizer, context: int, label: str,
              on_gave_up: Callable[[str], None]) -> RemoteEngine:
        """`vllm serve` on the base model's directory with LoRA enabled; the fine-tune's PEFT adapter is loaded
        at run time (POST /v1/load_lora_adapter) after each start. Written to vLLM's documented API; not yet run
        on hardware by tunelab's tests."""
        located = self.registry.locate(model_id)
        adapter_dir = located.weights if located.method == "lora" else None
        rank = json.loads((adapter_dir / "adapter_config.json").read_text()).get("r", 16) if adapter_dir else 0
        engine = RemoteEngine("http://127.0.0.1:0", "vllm", tokenizer=tokenizer, context=context, label=label,
                              served=model.name, adapters={model_id: model_id} if adapter_dir else None,
                              read_timeout=300.0)

        def command(port: int) -> list[str]:
            lora = ["--enable-lora", "--max-lora-rank", str(next(r for r in (8, 16, 32, 64, 128, 256, 512)
                                                                  if r >= rank))] if adapter_dir else []
            return [*self.vllm_command.split(), "serve", str(model.path), "--served-model-name", model.name,
                    "--host", "127.0.0.1", "--port", str(port), "--max-model-len", str(context), *lora]

        def load_adapter(url: str) -> None:
            if adapter_dir is not None:  # runtime-loaded adapters do not survive a restart: load it each time
                status, content = call(url, "POST", "/v1/load_lora_adapter", timeout=120,
                                       body={"lora_name": model_id, "lora_path": str(adapter_dir)})
                if status != 200 and b"already" not in content:
                    raise RuntimeError(f"{label} did not load the adapter: HTTP {status} {content[:300]!r}")

        self._own(name, label, command, engine, on_gave_up, env={"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"},
                  after_start=load_adapter)
        return engine

    def _own(self, name: str, label: str, command, engine: RemoteEngine, on_gave_up, *, env: dict | None = None,
             after_start: Callable[[str], None] = lambda url: None) -> None:
        def ready(url: str) -> None:
            engine.url = url
            after_start(url)

        process = EngineProcess(label, command, self.root / "logs" / f"{name}.log", env=env,
                                start_timeout=self.start_timeout, on_ready=ready, on_gave_up=on_gave_up)
        self.processes[name] = process
        process.end_leftover()
        try:
            process.start()
        except BaseException:
            process.stop()
            raise

    # --- the files llama.cpp runs ---

    def gguf_files(self, model_id: str) -> tuple[Path, list[Path]]:
        """The GGUF model llama-server loads for `model_id` and the LoRA adapter files beside it."""
        located = self.registry.locate(model_id)
        if located.method is None or located.method == "full":
            return self._exported(model_id), []
        return _fine_tune_gguf(self, located)

    def _exported(self, model_id: str) -> Path:
        """`model_id` exported once as one f16 GGUF file under engines/gguf/, reused by every later start."""
        from ..export import ExportRequest, export_model

        out = self.root / "gguf" / _slug(model_id)
        with self._exports:
            if not out.is_dir():
                log.warning("exporting %s to GGUF for llama.cpp (once): %s", model_id, out)
                export_model(self.registry, model_id, ExportRequest(format="gguf", quant="f16"), out)
        return next(out.glob("*.gguf"))


def _fine_tune_gguf(engines: Engines, located) -> tuple[Path, list[Path]]:
    """A LoRA fine-tune (or checkpoint) on llama.cpp: the base model's GGUF with the adapter as a LoRA GGUF, when
    tunelab has the LoRA writer (`tunelab.export.gguf_lora`); otherwise one GGUF of the merged fine-tune. The one
    place to change how fine-tunes reach llama.cpp."""
    try:
        from ..export.gguf_lora import write_lora_gguf
    except ImportError:
        return engines._exported(located.id), []
    from ..models.catalog import resolve_model

    base_file = engines._exported(located.base)
    lora = engines.root / "gguf" / _slug(located.id) / "adapter-lora-f16.gguf"
    with engines._exports:
        if not lora.is_file():
            lora.parent.mkdir(parents=True, exist_ok=True)
            write_lora_gguf(located.weights, resolve_model(located.base).path, lora)
    return base_file, [lora]


def _slug(model_id: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in model_id)


def _config(path: Path) -> dict:
    try:
        return json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return {}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _tail(path: Path, size: int = 1500) -> str:
    try:
        return path.read_bytes()[-size:].decode(errors="replace").strip() or "(empty)"
    except OSError:
        return "(no log)"
