"""The parts of decoding measured alone: one decode step of a single answer taken apart, the layers' 120
projections by number of rows, through each path a `Matrix` can take, and turning an answer's tokens into text.

    .venv/bin/python bench/decode_parts.py

Projections: SmolLM2-135M-Instruct's own 4-bit layer weights (30 layers of q/k/v, o, gate/up and down), one pass
over all of them with random bf16 rows, through tunelab's AMX int4 kernel (where it runs; in calls of up to 80
rows), PyTorch's int4 kernel (up to 16 rows: past 12 it loses to the bf16 copy) and PyTorch's bf16 product with
the dequantized weights. Text: per token over a 1,000-token answer, decoding the whole answer at every token
against `IncrementalText`. Runs on the calling thread with every core, as the engine's scheduler thread does.

The single-answer step (`decode_step`, what llama.cpp's single stream is compared with in bench/decode.py): the
Llama decoder's `step` with one row after the lab's prompt, in int4 as the engine runs it; the same step's 121
matrix products alone (`Matrix` calls with the step's shapes: 30 layers × 4 fused matrices and the LM head); and
the step's operations as PyTorch's profiler counts them (the AMX kernels are not PyTorch operations: their time
shows under the profile's `other`). `--step-only` measures just that.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tunelab.inference.detokenize import IncrementalText  # noqa: E402
from tunelab.inference.kernels import INT4_MAX_ROWS, amx_kernels  # noqa: E402
from tunelab.inference.weights import GROUP, int4_grid  # noqa: E402
from tunelab.models.catalog import resolve_model  # noqa: E402
from tunelab.models.llama_block import PROJECTIONS, fused_weight, projection_modules  # noqa: E402
from tunelab.models.load import load_causal_lm, load_tokenizer  # noqa: E402

SYSTEM = (ROOT / "examples" / "travel" / "system.txt").read_text().strip()

ROWS = (1, 3, 8, 16, 32, 80, 160, 400)


def timed(fn, repeats: int = 5) -> float:
    """Milliseconds per call, the best of `repeats` after a warm-up."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return round(best * 1000, 2)


def projections(model) -> dict:
    kernels = amx_kernels()
    weights = []
    for layer in model.model.layers:
        for key in PROJECTIONS:
            weight, _ = fused_weight(projection_modules(layer, key))
            codes, step, low = int4_grid(weight.float())
            weights.append({
                "n": weight.shape[0], "k": weight.shape[1], "dense": weight.to(torch.bfloat16),
                "packed": torch._convert_weight_to_int4pack_for_cpu(codes, 1),
                "scales_and_zeros": torch.stack([step.t(), (low + 8 * step).t()], dim=-1).to(torch.bfloat16),
                "amx": kernels.pack4(codes, step, low) if kernels else None})
    report = {}
    for rows in ROWS:
        xs = {w["k"]: torch.randn(rows, w["k"]).to(torch.bfloat16) for w in weights}
        paths = {"bf16_copy": lambda: [torch.nn.functional.linear(xs[w["k"]], w["dense"]) for w in weights]}
        if rows <= 16:
            paths["pytorch_int4"] = lambda: [torch._weight_int4pack_mm_for_cpu(xs[w["k"]], w["packed"], GROUP,
                                                                                 w["scales_and_zeros"])
                                             for w in weights]
        if kernels:
            paths["amx_int4"] = lambda: [kernels.int4(part, *w["amx"], w["n"]) for w in weights
                                         for part in xs[w["k"]].split(INT4_MAX_ROWS)]
        report[rows] = {name: timed(fn) for name, fn in paths.items()}
    return report


def decode_step(model, tokenizer, steps: int = 32) -> dict:
    """One single-row decode step of the int4 Llama decoder, then its parts (milliseconds per step, best of 5)."""
    from tunelab.data.render import render_prompt
    from tunelab.inference.decoder import LlamaDecoder

    decoder = LlamaDecoder(model, "int4")
    prompt = render_prompt(tokenizer, [{"role": "system", "content": SYSTEM},
                                       {"role": "user", "content": "What can you do?"}])
    cache = decoder.new_cache(2048)

    def run_steps():  # `steps` tokens after the prompt, from a fresh row each time
        while cache.rows:
            cache.remove_row(0)
        logits = decoder.prefill(cache, cache.add_row(), prompt, None)
        for _ in range(steps):
            logits = decoder.step(cache, [int(logits.max(-1).indices)], [None])[0]

    def prefill_only():
        while cache.rows:
            cache.remove_row(0)
        decoder.prefill(cache, cache.add_row(), prompt, None)

    step = (timed(run_steps) - timed(prefill_only)) / steps
    x = torch.randn(1, 1, decoder.dims.hidden).to(decoder.dtype)
    inner = {key: torch.randn(1, 1, matrix.in_features).to(decoder.dtype)
             for key, matrix in decoder.layers[0].matrices.items()}
    products = timed(lambda: [layer.matrices[key](inner[key]) for layer in decoder.layers for key in PROJECTIONS])
    head = timed(lambda: decoder.head(x[:, -1], torch.float32))
    with torch.profiler.profile() as profile:
        run_steps()
    events = [e for e in profile.events() if e.cpu_parent is None]  # top-level operations only
    per_step = Counter()
    for event in events:
        per_step[event.name] += event.self_cpu_time_total / 1000 / steps
    calls = Counter(e.name for e in events)
    return {"prompt_tokens": len(prompt), "step_ms": round(step, 3), "layer_products_ms": products,
            "head_ms": head, "rest_ms": round(step - products - head, 3),
            "operations_per_step": round(sum(calls.values()) / steps),
            "top_operations_ms_per_step": {name: round(ms, 3) for name, ms in per_step.most_common(12)}}


def text_per_token(tokenizer) -> dict:
    ids = tokenizer((ROOT / "docs/service.md").read_text(), add_special_tokens=False)["input_ids"][:1000]
    started = time.perf_counter()
    for n in range(1, len(ids) + 1):
        tokenizer.decode(ids[:n], skip_special_tokens=True)
    whole = time.perf_counter() - started
    text = IncrementalText(tokenizer)
    started = time.perf_counter()
    for n in range(1, len(ids) + 1):
        text.text(ids[:n])
    incremental = time.perf_counter() - started
    return {"tokens": len(ids), "whole_answer_us": round(whole / len(ids) * 1e6, 1),
            "incremental_us": round(incremental / len(ids) * 1e6, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("--step-only", action="store_true", help="only the single-answer decode step")
    args = parser.parse_args()
    base = resolve_model("SmolLM2-135M-Instruct")
    model = load_causal_lm(base.path).eval()
    tokenizer = load_tokenizer(base.path)
    with torch.no_grad():
        report = {"threads": torch.get_num_threads(), "amx_kernels": amx_kernels() is not None,
                  "decode_step": decode_step(model, tokenizer)}
        if not args.step_only:
            report["projections_ms_by_rows"] = projections(model)
            report["text_per_token"] = text_per_token(tokenizer)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
