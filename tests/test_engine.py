"""The inference engine on its own: batched decoding gives every row the answer it would get alone, across
adapters and while rows join and leave, through the Llama decoder and through transformers' forward (the
generic path); int8 decode weights stay close to fp32 and carry LoRA adapters."""

from __future__ import annotations

import threading

import pytest
import torch

from tunelab.inference.engine import Engine, SamplingParams
from tunelab.inference.weights import Int8Linear, prepare
from tunelab.models.catalog import LocalModel
from tunelab.models.load import load_causal_lm


@pytest.fixture(scope="module")
def adapter(tiny_model, tmp_path_factory):
    """A LoRA adapter with random (non-zero) weights, so it visibly changes the answers."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    model = get_peft_model(load_causal_lm(tiny_model), LoraConfig(r=4, target_modules="all-linear",
                                                                   init_lora_weights=False))
    path = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(path)
    return path


def answer_all(engine: Engine, requests: list[tuple[list[int], str | None, int]]) -> list[tuple[list, list]]:
    """Submit every request at once and wait for all: (prompt, adapter, max_tokens) -> (tokens, logprobs)."""
    done = threading.Semaphore(0)
    logprobs = [[] for _ in requests]

    def listener(i):
        def on_event(kind, payload):
            if kind == "delta":
                logprobs[i].extend(payload[1])
            if kind in ("done", "error"):
                done.release()
        return on_event

    generations = [engine.submit(prompt, SamplingParams(max_tokens=tokens, temperature=0, logprobs=True,
                                                        top_logprobs=20), adapter=adapter, end_ids=set(),
                                 on_event=listener(i))
                   for i, (prompt, adapter, tokens) in enumerate(requests)]
    for _ in generations:
        assert done.acquire(timeout=60)
    assert all(g.finish_reason == "length" for g in generations), [g.finish_reason for g in generations]
    return [(g.tokens, lp) for g, lp in zip(generations, logprobs)]


@pytest.mark.parametrize("generic", [False, True], ids=["llama", "generic"])
@pytest.mark.parametrize("weights", ["fp32", "int8"])
def test_a_row_decoded_in_a_batch_gets_the_answer_it_gets_alone(tiny_model, adapter, weights, generic):
    engine = Engine(LocalModel("tiny", tiny_model, {}), weights=weights, generic=generic)
    assert engine.weights == weights and (engine.decoder is None) == generic
    engine.attach("ft", adapter)
    encode = lambda text: engine.tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    requests = [(encode("Where should I go in May?"), None, 24),
                (encode("Tell me about the local markets around Lisbon and the day trips by train"), "ft", 6),
                (encode("Oslo"), "ft", 16),
                (encode("Tell me about festivals in spring"), None, 3)]
    alone = [answer_all(engine, [request])[0] for request in requests]
    together = answer_all(engine, requests)  # rows join together (one by one: generic), leave at 3, 6, 16, 24
    if weights == "fp32":
        assert [tokens for tokens, _ in together] == [tokens for tokens, _ in alone]
    else:  # bf16 activations round differently in a batch: compare the first decoded step's distribution
        for (tokens, batched), (expected, single) in zip(together, alone):
            assert len(tokens) == len(expected) and tokens[0] == expected[0]
            ours, theirs = dict(batched[1].top), dict(single[1].top)
            shared = ours.keys() & theirs.keys()
            assert len(shared) >= 10 and max(abs(ours[t] - theirs[t]) for t in shared) < 0.1
    assert alone[0][0] != answer_all(engine, [(requests[0][0], "ft", 24)])[0][0]  # the adapter changes the answer


def joining(engine: Engine, prompts: list[list[int]]) -> list[int]:
    """Submit `prompts` while the scheduler is busy, so they all wait; how many joined in each prompt pass."""
    sizes, busy, release = [], threading.Event(), threading.Event()
    start = engine._batch.start

    def spy(generations):
        sizes.append(len(generations))
        return start(generations)

    engine._batch.start = spy
    holder = threading.Thread(target=engine.call, args=(lambda: busy.set() or release.wait(),))
    holder.start()
    assert busy.wait(timeout=60)
    done = threading.Semaphore(0)
    for prompt in prompts:
        engine.submit(prompt, SamplingParams(max_tokens=2, temperature=0), adapter=None, end_ids=set(),
                      on_event=lambda kind, _: kind in ("done", "error") and done.release())
    release.set()
    for _ in prompts:
        assert done.acquire(timeout=60)
    holder.join()
    engine._batch.start = start
    return sizes


def test_requests_that_wait_together_join_in_one_pass_within_a_token_budget(tiny_model, monkeypatch):
    engine = Engine(LocalModel("tiny", tiny_model, {}), weights="fp32")
    prompts = [[5, 6, 7, 8] * 10, [9, 10, 11], [12] * 20, [13, 14]]
    assert joining(engine, prompts) == [4]
    monkeypatch.setattr("tunelab.inference.engine.PROMPT_TOKENS_PER_PASS", 45)
    engine.decoder.prompt_cache = None  # every prompt token to compute: 40, 3, 20, 2
    assert joining(engine, prompts) == [2, 2]  # 40 + 3 fit; the third would pass 45, so the rest join next
    generic = Engine(LocalModel("tiny", tiny_model, {}), weights="fp32", generic=True)
    assert joining(generic, prompts) == [1, 1, 1, 1]  # transformers' forward: one prompt at a time
    for e in (engine, generic):
        e.close()


def test_int8_rows_stay_close_to_the_fp32_layer():
    torch.manual_seed(0)
    linear = torch.nn.Linear(96, 200)
    quantized = Int8Linear(linear)
    for x in (torch.randn(3, 1, 96), torch.randn(1, 17, 96)):  # decode steps (int8) and a prompt (bf16)
        exact, approx = linear(x), quantized(x).float()
        assert approx.shape == exact.shape
        assert ((approx - exact).norm() / exact.norm()) < 0.02


def test_int8_conversion_replaces_every_linear_layer_and_adapters_attach_on_top(tiny_model, adapter):
    model = load_causal_lm(tiny_model).eval()
    assert prepare(model, "int8") == "int8"
    assert not [m for m in model.modules() if type(m) is torch.nn.Linear]
    with pytest.raises(ValueError, match="choose one of auto, int4, int8, fp32"):
        prepare(model, "int5")
    from peft import PeftModel

    lora = PeftModel.from_pretrained(model, adapter, adapter_name="ft").eval()
    wrapped = lora.base_model.model.model.layers[0].self_attn.q_proj
    assert isinstance(wrapped.base_layer, Int8Linear) and "ft" in wrapped.lora_A
    with torch.no_grad():
        ids = torch.tensor([[5, 6, 7]])
        with lora.disable_adapter():
            base = lora(input_ids=ids).logits
        tuned = lora(input_ids=ids).logits
    assert not torch.allclose(base, tuned)


def test_a_draw_follows_the_distribution_within_the_nucleus():
    from collections import Counter

    from tunelab.inference.engine import NUCLEUS_CANDIDATES, draw

    probs = torch.tensor([0.1, 0.5, 0.0, 0.3, 0.1])
    generator = torch.Generator().manual_seed(0)
    counts = Counter(draw(probs, 1.0, generator) for _ in range(4000))
    assert counts[2] == 0 and set(counts) == {0, 1, 3, 4}
    assert abs(counts[1] / 4000 - 0.5) < 0.03 and abs(counts[3] / 4000 - 0.3) < 0.03
    counts = Counter(draw(probs, 0.7, generator) for _ in range(4000))  # 0.5 + 0.3 reach 0.7: tokens 1 and 3
    assert set(counts) == {1, 3} and abs(counts[1] / 4000 - 0.5 / 0.8) < 0.03
    assert {draw(probs, 0.0, generator) for _ in range(50)} == {1}  # the nucleus is at least the likeliest token
    flat = torch.full((4 * NUCLEUS_CANDIDATES,), 1 / (4 * NUCLEUS_CANDIDATES))  # a nucleus wider than the shortlist
    assert len({draw(flat, 0.9, generator) for _ in range(3000)}) > NUCLEUS_CANDIDATES
    same = [torch.Generator().manual_seed(7) for _ in range(2)]
    assert [draw(probs, 0.9, same[0]) for _ in range(20)] == [draw(probs, 0.9, same[1]) for _ in range(20)]


def test_closing_an_engine_ends_what_it_was_answering_and_stops_its_thread(tiny_model):
    engine = Engine(LocalModel("tiny", tiny_model, {}), weights="fp32")
    ended = threading.Event()
    events = []

    def on_event(kind, payload):
        events.append(kind)
        if kind in ("done", "error"):
            ended.set()

    engine.submit([5, 6, 7], SamplingParams(max_tokens=100_000, temperature=0), adapter=None, end_ids=set(),
                  on_event=on_event)
    while "delta" not in events:
        assert not ended.wait(0.01)
    engine.close()
    assert ended.is_set() and events[-1] == "error" and not engine._thread.is_alive()


def test_a_process_that_exits_while_an_engine_decodes_exits_cleanly(tiny_model):
    """The scheduler thread is a daemon: at exit it is stopped between two passes, not torn down inside torch
    (which aborts the process: 'terminate called without an active exception'; without the stop this script
    aborted in every try, 3 of 3 with this model and 4 of 4 with SmolLM2)."""
    import subprocess
    import sys

    script = ("import time\n"
              "from pathlib import Path\n"
              "from tunelab.inference.engine import Engine, SamplingParams\n"
              "from tunelab.models.catalog import LocalModel\n"
              f"engine = Engine(LocalModel('tiny', Path({str(tiny_model)!r}), {{}}))\n"
              "for _ in range(4):\n"
              "    engine.submit([5, 6, 7], SamplingParams(max_tokens=100_000, temperature=0.7), adapter=None,\n"
              "                  end_ids=set(), on_event=lambda *event: None)\n"
              "time.sleep(1)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "terminate called" not in done.stderr, done.stderr[-2000:]


def test_a_turn_ends_on_every_end_token_the_generation_config_names(tmp_path):
    """A model whose generation_config.json names an end-of-turn token besides the tokenizer's eos (as Llama 3's
    <|eot_id|> is) stops on it: the pool's target ends on both."""
    import json

    from tiny_models import build

    from tunelab.inference.pool import EnginePool

    path = build("llama", tmp_path / "eot")
    end_of_text = 0  # <|endoftext|>: not the tokenizer's eos, named only by the generation config
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, end_of_text]}))
    engine = Engine(LocalModel("eot", path, {}))
    try:
        target = EnginePool._target(engine, None, engine.tokenizer)
        assert engine.tokenizer.eos_token_id == 2 and {2, end_of_text} <= target.end_ids
    finally:
        engine.close()
