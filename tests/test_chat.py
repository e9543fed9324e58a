"""Chat completions through the `openai` SDK against the real app: base and fine-tuned models, streaming, sampling
parameters, stop strings, errors, and concurrency, with the tiny model."""

from __future__ import annotations

import threading
import time

import httpx2 as httpx
import openai
import pytest


SYSTEM = {"role": "system", "content": "You are a travel assistant."}
ASK = [SYSTEM, {"role": "user", "content": "Where should I go in May?"}]


def test_base_and_fine_tuned_models_answer_in_the_openai_shape(tuned):
    from tunelab.data.render import render_prompt
    from tunelab.models.catalog import resolve_model
    from tunelab.models.load import load_tokenizer

    service, model = tuned
    client = service.client()
    answers = {}
    for name in ("tiny", model):
        r = client.chat.completions.create(model=name, messages=ASK, max_tokens=12, seed=5, logprobs=True,
                                           top_logprobs=2)
        assert r.object == "chat.completion" and r.id.startswith("chatcmpl-") and r.model == name
        assert r.system_fingerprint == "fp_tunelab" and len(r.choices) == 1
        choice = r.choices[0]
        assert choice.finish_reason == "length" and choice.message.role == "assistant" and choice.message.content
        assert r.usage.completion_tokens == 12 and r.usage.total_tokens == r.usage.prompt_tokens + 12
        assert len(choice.logprobs.content) == 12 and all(len(t.top_logprobs) == 2 for t in choice.logprobs.content)
        answers[name] = [t.logprob for t in choice.logprobs.content]
    prompt = render_prompt(load_tokenizer(resolve_model("tiny").path), ASK)
    assert r.usage.prompt_tokens == len(prompt)
    assert answers["tiny"] != answers[model]  # the adapter is applied to the fine-tune only


def test_seeded_sampling_repeats_and_streaming_sends_the_same_text(tuned):
    service, model = tuned
    client = service.client()
    ask = dict(model=model, messages=ASK, max_tokens=16, seed=11, temperature=1.2, top_p=0.9)
    first = client.chat.completions.create(**ask).choices[0].message.content
    assert client.chat.completions.create(**ask).choices[0].message.content == first
    assert client.chat.completions.create(**{**ask, "seed": 12}).choices[0].message.content != first

    chunks = list(client.chat.completions.create(**ask, stream=True, stream_options={"include_usage": True}))
    assert len({c.id for c in chunks}) == 1 and chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == first
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 16
    assert all(c.usage is None for c in chunks[:-1])

    two = client.chat.completions.create(**ask, n=2)
    assert [c.index for c in two.choices] == [0, 1] and two.choices[0].message.content == first
    assert two.usage.completion_tokens == 32


def test_a_stop_string_ends_the_answer_before_it(tuned):
    service, model = tuned
    client = service.client()
    ask = dict(model=model, messages=ASK, max_tokens=30, seed=2, temperature=0)
    full = client.chat.completions.create(**ask).choices[0].message.content
    stop = full[len(full) // 2: len(full) // 2 + 3]
    cut = full[:full.find(stop)]
    answer = client.chat.completions.create(**ask, stop=[stop, "never-there"]).choices[0]
    assert answer.message.content == cut and answer.finish_reason == "stop"
    chunks = list(client.chat.completions.create(**ask, stop=stop, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == cut
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_bad_chat_requests_name_the_field(service):
    client = service.client()
    cases = [
        (dict(model="nope", messages=ASK), openai.NotFoundError, "model"),
        (dict(model="tiny", messages=ASK, max_tokens=10**6), openai.BadRequestError, "max_tokens"),
        (dict(model="tiny", messages=ASK, temperature=3), openai.BadRequestError, "temperature"),
        (dict(model="tiny", messages=ASK, n=100), openai.BadRequestError, "n"),
        (dict(model="tiny", messages=[]), openai.BadRequestError, "messages"),
        (dict(model="tiny", messages=[{"role": "robot", "content": "x"}]), openai.BadRequestError, "messages.0.role"),
        (dict(model="tiny", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "http://127.0.0.1/x.png"}}]}]),
         openai.BadRequestError, "messages[0].content"),
    ]
    for kwargs, error, param in cases:
        with pytest.raises(error) as caught:
            client.chat.completions.create(**kwargs)
        assert caught.value.body["param"] == param, (kwargs, caught.value.body)


def test_concurrent_answers_interleave_and_a_dropped_stream_stops_generating(tuned):
    service, model = tuned
    client = service.client()
    for name in ("tiny", model):  # loaded and attached before the race
        client.chat.completions.create(model=name, messages=ASK, max_tokens=1)
    engine = service.app.state.service.pool.engines["tiny"]
    submitted = []
    submit = engine.submit
    engine.submit = lambda *a, **k: submitted.append(submit(*a, **k)) or submitted[-1]  # observe, not replace

    def ask(name, tokens):
        client.chat.completions.create(model=name, messages=ASK, max_tokens=tokens, seed=1)

    long = threading.Thread(target=ask, args=("tiny", 900))
    long.start()
    deadline = time.monotonic() + 10
    while not (submitted and submitted[0].tokens) and time.monotonic() < deadline:
        time.sleep(0.001)
    ask(model, 5)  # a short answer from another adapter is not held up by the long one
    assert len(submitted[1].tokens) == 5 and submitted[0].finish_reason is None  # the long one still runs
    long.join()
    submitted.clear()
    root = service.base_url.removesuffix("/v1")
    with httpx.stream("POST", f"{service.base_url}/chat/completions", headers={"Authorization": "Bearer test-key"},
                      json={"model": model, "messages": ASK, "max_tokens": 900, "stream": True}) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
        assert httpx.get(f"{root}/health").status_code == 200  # the event loop stays free
    generation, deadline = submitted[0], time.monotonic() + 10
    while not (generation.cancelled or generation.finish_reason) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert generation.cancelled and len(generation.tokens) < 900  # dropped when the client left, not run to the end
    time.sleep(0.2)
    assert generation not in engine._batch.rows and generation not in engine._waiting


def test_a_deleted_fine_tune_no_longer_answers(tuned):
    service, model = tuned
    client = service.client()
    assert client.chat.completions.create(model=model, messages=ASK, max_tokens=2).choices
    client.models.delete(model)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model=model, messages=ASK, max_tokens=2)
