"""Decode speed: tunelab's engine vs transformers `generate()` on the same model, prompt and greedy decoding.

    .venv/bin/python bench/decode.py                  # SmolLM2-135M-Instruct, 128 new tokens
    .venv/bin/python bench/decode.py --tokens 64 --streams 8

The prompt is the lab's system message plus its first question. Both sides generate exactly `--tokens` tokens
(end-of-turn ignored) so they do the same work. Reported: time to first token, single-stream tokens/s, and the
engine's aggregate tokens/s with `--streams` concurrent answers.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from tunelab.data.render import render_prompt  # noqa: E402
from tunelab.inference.engine import Engine, SamplingParams  # noqa: E402
from tunelab.models.catalog import resolve_model  # noqa: E402

SYSTEM = ("You are an AI travel assistant that helps people plan their trips. Your objective is to offer support for "
          "travel-related inquiries, such as visa requirements, weather forecasts, local attractions, and cultural "
          "norms. You should not provide any hotel, flight, rental car or restaurant recommendations. Ask engaging "
          "questions to help someone plan their trip and think about what they want to do on their holiday.")


def run_generate(model, prompt: list[int], tokens: int) -> dict:
    ids = torch.tensor([prompt])
    with torch.no_grad():
        started = time.perf_counter()
        model.generate(ids, max_new_tokens=1, min_new_tokens=1, do_sample=False)
        first = time.perf_counter() - started
        started = time.perf_counter()
        out = model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
        seconds = time.perf_counter() - started
    assert out.shape[1] - len(prompt) == tokens
    return {"ttft_s": round(first, 3), "tokens_per_s": round(tokens / seconds, 1)}


def run_engine(engine: Engine, prompt: list[int], tokens: int, streams: int) -> dict:
    finished = threading.Semaphore(0)
    firsts: list[float] = []
    started = time.perf_counter()

    def listener():
        seen = []

        def on_event(kind, payload):
            if kind == "delta" and not seen:
                seen.append(1)
                firsts.append(time.perf_counter() - started)
            if kind in ("done", "error"):
                finished.release()
        return on_event

    generations = [engine.submit(prompt, SamplingParams(max_tokens=tokens, temperature=0), adapter=None,
                                 end_ids=set(), on_event=listener()) for _ in range(streams)]
    for _ in range(streams):
        finished.acquire()
    seconds = time.perf_counter() - started
    produced = sum(len(g.tokens) for g in generations)
    return {"ttft_s": round(min(firsts), 3), "tokens_per_s": round(produced / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="SmolLM2-135M-Instruct")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--streams", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    base = resolve_model(args.model)
    engine = Engine(base)
    prompt = render_prompt(engine.tokenizer, [{"role": "system", "content": SYSTEM},
                                              {"role": "user", "content": "What can you do?"}])
    run_engine(engine, prompt, 4, 1)  # warm-up
    generate = run_generate(engine.model, prompt, args.tokens)
    single = run_engine(engine, prompt, args.tokens, 1)
    many = run_engine(engine, prompt, args.tokens, args.streams)
    print(json.dumps({
        "model": args.model, "prompt_tokens": len(prompt), "new_tokens": args.tokens, "threads": torch.get_num_threads(),
        "transformers_generate": generate, "tunelab_single": single, f"tunelab_{args.streams}_streams": many,
        "single_vs_generate": round(single["tokens_per_s"] / generate["tokens_per_s"], 2),
        "aggregate_vs_single": round(many["tokens_per_s"] / single["tokens_per_s"], 2),
    }, indent=2))


if __name__ == "__main__":
    main()
