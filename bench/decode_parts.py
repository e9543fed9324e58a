"""The parts of decoding measured alone: the layers' 120 projections by number of rows, through each path a
`Matrix` can take, and turning an answer's tokens into text.

    .venv/bin/python bench/decode_parts.py

Projections: SmolLM2-135M-Instruct's own 4-bit layer weights (30 layers of q/k/v, o, gate/up and down), one pass
over all of them with random bf16 rows, through tunelab's AMX int4 kernel (where it runs; in calls of up to 80
rows), PyTorch's int4 kernel (up to 16 rows: past 12 it loses to the bf16 copy) and PyTorch's bf16 product with
the dequantized weights. Text: per token over a 1,000-token answer, decoding the whole answer at every token
against `IncrementalText`. Runs on the calling thread with every core, as the engine's scheduler thread does.
"""

from __future__ import annotations

import json
import sys
import time
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
    base = resolve_model("SmolLM2-135M-Instruct")
    model = load_causal_lm(base.path).eval()
    with torch.no_grad():
        report = {"threads": torch.get_num_threads(), "amx_kernels": amx_kernels() is not None,
                  "projections_ms_by_rows": projections(model),
                  "text_per_token": text_per_token(load_tokenizer(base.path))}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
