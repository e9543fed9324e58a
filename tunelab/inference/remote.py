"""An engine that is a server elsewhere: llama.cpp's `llama-server` or vLLM's OpenAI server, reached over its
`/v1/completions` route, behind the same surface as the in-process engine (engine.py).

    engine = RemoteEngine("http://127.0.0.1:8081", "llama.cpp", tokenizer=tok, context=8192,
                          label="the llama.cpp engine of deployment 'ft-travel'")
    generation = engine.submit(prompt_ids, SamplingParams(max_tokens=64), adapter=None, end_ids={2},
                               on_event=listener)

tunelab renders the prompt itself and sends its token ids (both servers take a token-id prompt), so the chat
template, the limits, the content filter and usage stay tunelab's; the server only decodes. Each generation
streams on its own thread and reports ("delta", (text, logprobs)), ("done", finish_reason) or ("error",
EngineError) like the local engine. tunelab's stop strings are applied here too (sent to the server as well, so it
stops early); the end-of-turn tokens are the server's own (the GGUF's, or vLLM's `stop_token_ids`). The adapter is
chosen per request: llama.cpp's `lora` field (adapters loaded at start; every request names every adapter's scale), vLLM's `model`
(the adapter's name, loaded at run time).

The server's own troubles become tunelab errors a client can act on, never a hang: down → 503, overloaded → 503
with Retry-After, a prompt over its context → 400 naming `messages`, a stream cut mid-answer → an error event, and
connect and read timeouts bound every wait.
"""

from __future__ import annotations

import http.client
import json
import logging
import threading
from typing import Callable
from urllib.parse import urlparse

from ..errors import InvalidRequest, TunelabError
from .engine import SamplingParams, TokenLogprob, warm_up

KINDS = ("llama.cpp", "vllm")

log = logging.getLogger("tunelab.inference.remote")


class EngineError(TunelabError):
    """The engine under a deployment failed; the message names the deployment and the engine."""

    type = "server_error"
    retry_after: float | None = None


class EngineUnavailable(EngineError):
    """Down, restarting, loading or overloaded: the SDK retries a 503 after Retry-After."""

    code = "engine_unavailable"
    status = 503
    retry_after = 2.0


class EngineFailed(EngineError):
    """The engine accepted the request, then stopped answering it (killed, crashed, timed out)."""

    code = "engine_failed"
    status = 502


class RemoteGeneration:
    """One answer streamed from the engine: `tokens` (ids where the engine reports them, else one entry per token
    counted, settled to the engine's usage at the end), `finish_reason`, `cancel()`."""

    def __init__(self, engine: "RemoteEngine", prompt: list[int], params: SamplingParams, adapter: str | None,
                 end_ids: set[int], on_event: Callable):
        self.engine, self.prompt, self.params, self.adapter, self.end_ids = engine, prompt, params, adapter, end_ids
        self.on_event = on_event
        self.tokens: list[int | None] = []
        self.text = ""  # sent so far
        self.received = ""  # from the engine so far (a tail may be held back: a stop string may be starting)
        self.finish_reason: str | None = None
        self.cancelled = False
        self._admitted = threading.Event()  # the engine answered 200 (or refused: then `_refusal` says why)
        self._refusal: TunelabError | None = None

    def cancel(self) -> None:
        self.cancelled = True

    def wait_admitted(self) -> None:
        """Block until the engine has taken the request (its stream began) or refused it; raise the refusal, so
        that an engine that is down or busy is an HTTP error before any byte of the answer is sent."""
        self._admitted.wait(self.engine.connect_timeout + self.engine.read_timeout + 1)
        if self._refusal is not None:
            raise self._refusal

    # --- the stream's thread ---

    def run(self) -> None:
        engine = self.engine
        connection = None
        try:
            try:
                connection = engine.connect()
            except OSError:
                raise EngineUnavailable(f"{engine.label} at {engine.url} is not reachable; it may be restarting: "
                                        "try again shortly") from None
            connection.request("POST", "/v1/completions", json.dumps(engine.body(self)),
                               {"Content-Type": "application/json"})
            response = connection.getresponse()
            if response.status != 200:
                raise engine.refusal(response.status, response.read())
            self._admitted.set()
            ended = self._read(response)
        except TunelabError as exc:
            return self._fail(exc)
        except TimeoutError:
            return self._fail(EngineFailed(f"{engine.label} did not answer within {engine.read_timeout:g} s")
                              if self._admitted.is_set() else
                              EngineUnavailable(f"{engine.label} did not take the request within "
                                                f"{engine.read_timeout:g} s; it may be overloaded"))
        except (OSError, http.client.HTTPException, ValueError) as exc:
            log.warning("%s: %s: %s", engine.label, type(exc).__name__, exc)
            return self._fail(EngineFailed(f"{engine.label} stopped while answering; try again")
                              if self._admitted.is_set() else
                              EngineUnavailable(f"{engine.label} at {engine.url} dropped the request; it may be "
                                                "restarting: try again shortly"))
        finally:
            if connection is not None:
                connection.close()  # before the end of the answer: the engine drops the request
        if self.finish_reason is None and not self.cancelled:
            if ended is None:  # the stream ended without a finish reason: the engine went away mid-answer
                return self._fail(EngineFailed(f"{engine.label} stopped while answering; try again"))
            self._finish(ended)

    def _read(self, response) -> str | None:
        """Read the stream to its end; return the engine's finish reason (None if it never gave one). The usage
        chunk (after the finish reason, in vLLM) sets the token count before "done" is reported."""
        ended = None
        for raw in response:
            if self.cancelled or self.finish_reason is not None:
                break
            line = raw.decode("utf-8").strip()
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if chunk.get("error"):
                message = chunk["error"].get("message") if isinstance(chunk["error"], dict) else chunk["error"]
                raise EngineFailed(f"{self.engine.label} failed while answering: {message}")
            for choice in chunk.get("choices") or []:
                self._receive(choice.get("text") or "", _logprobs(choice.get("logprobs")))
                if choice.get("finish_reason"):
                    ended = "length" if choice["finish_reason"] == "length" else "stop"
            if chunk.get("usage"):  # the engine's count is the truth: a chunk may carry several tokens
                n = int(chunk["usage"].get("completion_tokens", len(self.tokens)))
                self.tokens = (self.tokens + [None] * n)[:n]
        return ended

    def _receive(self, text: str, logprobs: list[tuple[int | None, TokenLogprob]]) -> None:
        """New text from the engine: count its tokens and send what no stop string can still claim."""
        if logprobs:
            self.tokens += [token for token, _ in logprobs]
        elif text:
            self.tokens.append(None)
        self.received += text
        stops = self.params.stop
        if any(s in self.received for s in stops):
            return self._finish("stop")
        hold = 0
        for k in range(max((len(s) - 1 for s in stops), default=0), 0, -1):
            if any(s.startswith(self.received[-k:]) for s in stops):
                hold = k
                break
        self._send(self.received[:len(self.received) - hold], [lp for _, lp in logprobs])

    def _send(self, text: str, logprobs: list[TokenLogprob]) -> None:
        if not self.params.logprobs:
            logprobs = []
        elif not self.params.top_logprobs:  # one was asked of the engine to learn the token's own
            logprobs = [TokenLogprob(lp.token, lp.logprob, []) for lp in logprobs]
        if len(text) > len(self.text) or logprobs:
            delta, self.text = text[len(self.text):], text
            self.on_event("delta", (delta, logprobs))

    def _finish(self, reason: str) -> None:
        if self.finish_reason is not None:
            return
        text = self.received
        cuts = [text.find(s) for s in self.params.stop if s in text]
        if cuts:
            text, reason = text[:min(cuts)], "stop"
        self._send(text, [])
        self.finish_reason = reason
        self.on_event("done", reason)

    def _fail(self, error: TunelabError) -> None:
        self._refusal = None if self._admitted.is_set() else error
        self._admitted.set()
        if self.finish_reason is None:
            self.finish_reason = "error"
            try:
                self.on_event("error", error)
            except Exception:  # a listener that fails cannot be told
                pass


class RemoteEngine:
    """An OpenAI-compatible completions server, as tunelab's chat service and deployments use an engine:
    `context`, `tokenizer`, `submit()`, `warm_up()`. `adapters` maps a tunelab model id to what selects it on the
    engine (a llama.cpp LoRA index, a vLLM model name); `served` is the name of the engine's base model."""

    def __init__(self, url: str, kind: str, *, tokenizer, context: int, label: str, served: str = "tunelab",
                 adapters: dict[str, int | str] | None = None, connect_timeout: float = 5.0,
                 read_timeout: float = 120.0):
        if kind not in KINDS:
            raise ValueError(f"unknown engine kind {kind!r}")
        self.url = url.rstrip("/")
        self.kind, self.tokenizer, self.context, self.label, self.served = kind, tokenizer, context, label, served
        self.adapters: dict[str, int | str] = dict(adapters or {})
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout

    def connect(self) -> http.client.HTTPConnection:
        """A connection to the engine, within the connect timeout; its reads then wait up to the read timeout."""
        return connect(self.url, self.connect_timeout, self.read_timeout)

    def submit(self, prompt: list[int], params: SamplingParams, *, adapter: str | None, end_ids: set[int],
               on_event: Callable) -> RemoteGeneration:
        generation = RemoteGeneration(self, prompt, params, adapter, end_ids, on_event)
        threading.Thread(target=generation.run, name=f"tunelab-remote-{self.kind}", daemon=True).start()
        return generation

    def warm_up(self, adapter: str | None, end_ids: set[int], timeout: float = 120.0) -> None:
        """One token through the engine: proves it (and the adapter) answers."""
        warm_up(self, adapter, end_ids, timeout, f"{self.label} did not answer its warm-up in time")

    def body(self, g: RemoteGeneration) -> dict:
        """The /v1/completions request for a generation: tunelab's sampling, the engine's adapter selection."""
        p = g.params
        body = {"model": self.served, "prompt": g.prompt, "max_tokens": p.max_tokens, "temperature": p.temperature,
                "top_p": p.top_p, "presence_penalty": p.presence_penalty, "frequency_penalty": p.frequency_penalty,
                "stream": True, "stream_options": {"include_usage": True}}
        if p.seed is not None:
            body["seed"] = p.seed
        if p.stop:
            body["stop"] = p.stop
        if p.logprobs:
            body["logprobs"] = max(1, p.top_logprobs)
        if self.kind == "llama.cpp":
            body.update(top_k=0, min_p=0.0)  # llama-server's defaults (40, 0.05) would sample otherwise
            # Every adapter's scale, every time: llama-server applies an adapter left out (or an empty list) at its
            # start scale, and reuses a cached prompt computed under other scales unless they are named.
            chosen = self.adapters.get(g.adapter) if g.adapter else None
            if self.adapters:
                body["lora"] = [{"id": i, "scale": 1.0 if i == chosen else 0.0}
                                for i in sorted(set(self.adapters.values()))]
        else:
            body["model"] = self.adapters.get(g.adapter, self.served) if g.adapter else self.served
            body["stop_token_ids"] = sorted(g.end_ids)
        return body

    def refusal(self, status: int, content: bytes) -> TunelabError:
        """The engine's HTTP error, as the error a tunelab client should see."""
        try:
            error = json.loads(content).get("error") or {}
            message = error.get("message", "") if isinstance(error, dict) else str(error)
            kind = error.get("type", "") if isinstance(error, dict) else ""
        except (ValueError, AttributeError):
            message, kind = content[:300].decode(errors="replace"), ""
        if status in (429, 503):
            return EngineUnavailable(f"{self.label} is busy or loading (HTTP {status}: {message}); try again "
                                     "shortly")
        if status == 400 and ("context" in kind or "context" in message):
            return InvalidRequest(f"the messages do not fit the context of {self.label}: {message}",
                                  param="messages")
        log.warning("%s refused a request: HTTP %d %s", self.label, status, message)
        return EngineFailed(f"{self.label} refused the request (HTTP {status}: {message[:300]})")

    def close(self) -> None:
        """Nothing is held between requests (one connection per answer); here for the engine surface."""


def connect(url: str, connect_timeout: float, read_timeout: float) -> http.client.HTTPConnection:
    """An HTTP connection to `url`'s host, connected within `connect_timeout` (raises OSError), reading with
    `read_timeout`. The standard library's client: nothing to install beside tunelab."""
    parsed = urlparse(url)
    kind = http.client.HTTPSConnection if parsed.scheme == "https" else http.client.HTTPConnection
    connection = kind(parsed.hostname, parsed.port, timeout=connect_timeout)
    connection.connect()
    connection.sock.settimeout(read_timeout)
    return connection


def call(url: str, method: str, path: str, body: dict | None = None, timeout: float = 10.0) -> tuple[int, bytes]:
    """One small request to an engine (health, models, loading an adapter): (status, body). Raises OSError or
    http.client.HTTPException when it cannot be made."""
    connection = connect(url, timeout, timeout)
    try:
        connection.request(method, path, json.dumps(body) if body is not None else None,
                           {"Content-Type": "application/json"} if body is not None else {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _logprobs(value) -> list[tuple[int | None, TokenLogprob]]:
    """(token id or None, log probability) per token of a completions chunk: llama-server's shape
    (`content: [{id, token, logprob, top_logprobs}]`) or the legacy one vLLM sends (`tokens`, `token_logprobs`,
    `top_logprobs: [{token: logprob}]`)."""
    if not value:
        return []
    if "content" in value:
        return [(item.get("id"), TokenLogprob(item.get("token", ""), float(item.get("logprob", 0.0)),
                                              [(t.get("token", ""), float(t.get("logprob", 0.0)))
                                               for t in item.get("top_logprobs") or []]))
                for item in value["content"] or []]
    tops = value.get("top_logprobs") or [None] * len(value.get("tokens") or [])
    return [(None, TokenLogprob(token, float(lp or 0.0), sorted((top or {}).items(), key=lambda kv: -kv[1])))
            for token, lp, top in zip(value.get("tokens") or [], value.get("token_logprobs") or [], tops)]
