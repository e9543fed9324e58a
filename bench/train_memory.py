"""Peak memory of a LoRA fine-tune, by model size and matmul precision, measured and predicted by a formula.

    .venv/bin/python bench/train_memory.py                      # 135M, 0.5B, 1.5B × fp32, bf16
    .venv/bin/python bench/train_memory.py --sizes 135M --precisions fp32
    PYTHONPATH=/path/to/other/checkout .venv/bin/python bench/train_memory.py --sizes 135M   # another version

Each case runs tunelab's real training path (`tunelab.train.recipe.run`, what the trainer process runs: load,
LoRA r=16 on every linear layer, the lean forward, AdamW, a checkpoint and the saved adapter) in a fresh
process, and reports that process's peak resident memory (VmHWM); nothing else shares it. The models are Llama
configs with random weights, written once as fp32 safetensors (what tunelab converts its built-in model to) under
~/.cache/tunelab/bench/train-memory, with SmolLM2's tokenizer and chat template:

    135M  SmolLM2-135M's config (hidden 576, 30 layers, 9/3 heads, MLP 1536, vocabulary 49,152, tied)
    0.5B  Qwen2.5-0.5B's shapes (hidden 896, 24 layers, 14/2 heads, MLP 4864, vocabulary 151,936, tied)
    1.5B  Qwen2.5-1.5B's shapes (hidden 1536, 28 layers, 12/2 heads of 128, MLP 8960, vocabulary 151,936, tied)

The data are 12 conversations of the travel set, each cut to `--seq` tokens (its assistant reply repeated to
reach it), in batches of `--batch`: every step packs batch × seq tokens into one pass. The prediction:

    peak ≈ overhead + weights + activations + 16 × LoRA parameters
    weights      = linear weights × (4 bytes fp32 | 2 bytes bf16) + embeddings × 4 (+ × 2: a bf16 copy of a
                   tied head in a bf16 run; the lookup stays fp32)
    activations  = tokens per pass × layers × (32·hidden + 16·MLP + 12·kv_dim + 34·rank) bytes, what a pass keeps
                   for its backward (8 + 4 + 3 floats per unit: counted with saved-tensor hooks)
    16 × LoRA    = each LoRA parameter's value, gradient and two Adam moments, fp32
    overhead     = the process before the model: Python, torch, transformers, PEFT, tokenizer (measured)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path.home() / ".cache" / "tunelab" / "bench" / "train-memory"
RANK = 16
SHAPES = {  # hidden, layers, heads, kv heads, head_dim, MLP, vocabulary
    "135M": dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, head_dim=64,
                 intermediate_size=1536, vocab_size=49152, rope_theta=100000.0),
    "0.5B": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2, head_dim=64,
                 intermediate_size=4864, vocab_size=151936, rope_theta=1000000.0),
    "1.5B": dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                 head_dim=128, intermediate_size=8960, vocab_size=151936, rope_theta=1000000.0),
}


def vm(field: str) -> int:
    """A /proc/self/status memory figure (VmHWM, VmRSS), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def model_dir(size: str) -> Path:
    """The random-weight model of `size`, written once (beside, then renamed)."""
    path = CACHE / f"llama-{size}"
    if (path / "config.json").exists():
        return path
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tunelab.models.catalog import resolve_model

    smol = resolve_model("SmolLM2-135M-Instruct").path
    tmp = CACHE / f".llama-{size}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    torch.manual_seed(0)
    config = LlamaConfig(**SHAPES[size], tie_word_embeddings=True, rms_norm_eps=1e-6, max_position_embeddings=8192,
                         bos_token_id=1, eos_token_id=2, pad_token_id=2, initializer_range=0.02)
    LlamaForCausalLM(config).save_pretrained(tmp, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        if (smol / name).exists():
            shutil.copy(smol / name, tmp / name)
    tmp.rename(path)
    return path


def train_file(seq: int) -> Path:
    """12 travel conversations, each at least `seq` tokens long (its reply repeated), so each is cut to `seq`."""
    path = CACHE / f"train-{seq}.jsonl"
    if not path.exists():
        rows = [json.loads(line) for line in (ROOT / "examples/travel/train.jsonl").read_text().splitlines()[:12]]
        for row in rows:
            reply = row["messages"][-1]
            reply["content"] = " ".join([reply["content"]] * (1 + seq // 8))
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def shape_figures(size: str, precision: str, tokens: int) -> dict:
    """Parameters, weight bytes and the predicted peak (without the overhead) of `size`, from its shapes alone."""
    s = SHAPES[size]
    h, i, layers, vocab = s["hidden_size"], s["intermediate_size"], s["num_hidden_layers"], s["vocab_size"]
    q, kv = s["num_attention_heads"] * s["head_dim"], s["num_key_value_heads"] * s["head_dim"]
    linear = layers * (h * q + 2 * h * kv + q * h + 3 * h * i)
    embeddings = vocab * h
    norms = (2 * layers + 1) * h
    lora = layers * RANK * ((h + q) + 2 * (h + kv) + (q + h) + 2 * (h + i) + (i + h))
    bytes_per = 2 if precision == "bf16" else 4
    weights = linear * bytes_per + (embeddings + norms) * 4 + (embeddings * 2 if precision == "bf16" else 0)
    activations = tokens * layers * (32 * h + 16 * i + 12 * kv + 34 * RANK)
    return {"parameters": linear + embeddings + norms, "lora_parameters": lora, "weights_bytes": weights,
            "activations_bytes": activations, "lora_bytes": 16 * lora}


def child(size: str, precision: str, batch: int, seq: int, steps: int) -> None:
    """One fine-tune in this process; prints its memory figures as a RESULT line."""
    overhead_before_import = vm("VmRSS")
    import torch  # noqa: F401  (the libraries a trainer process loads, before the model)
    import peft  # noqa: F401
    import transformers  # noqa: F401

    from tunelab.train.config import parse_config
    from tunelab.train.recipe import run

    path, data = model_dir(size), train_file(seq)
    from tunelab.models.load import load_tokenizer
    load_tokenizer(path)
    overhead = vm("VmRSS")
    figures = {"overhead_bytes": overhead, "python_bytes": overhead_before_import}
    stop = threading.Event()

    class Reporter:
        def start(self, *a):
            figures["setup_peak_bytes"], figures["start_rss_bytes"] = vm("VmHWM"), vm("VmRSS")
            self.started = time.perf_counter()

        def step(self, m):
            figures.setdefault("step_rss_bytes", []).append(vm("VmRSS"))
            figures["step_peak_bytes"] = vm("VmHWM")
            print(f"  {size} {precision} step {m.step} loss {m.train_loss:.3f} "
                  f"peak {vm('VmHWM') / 2**30:.2f} GiB", file=sys.stderr, flush=True)
            if m.step >= steps:
                stop.set()

        def message(self, text): pass
        def checkpoint(self, *a): pass
        def finish(self):
            figures["seconds_training"] = time.perf_counter() - self.started

    import tempfile
    with tempfile.TemporaryDirectory() as out:
        config = parse_config(model=str(path), train_file=data, batch_size=batch, max_seq_len=seq, n_epochs=1,
                              seed=0, lora_rank=RANK, precision=precision, out=Path(out) / "run")
        run(config, Reporter(), stop=stop)
    figures["peak_bytes"] = vm("VmHWM")
    print("RESULT " + json.dumps(figures), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=256, help="tokens per conversation")
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--child", nargs=2, metavar=("SIZE", "PRECISION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.batch, args.seq, args.steps)
        return

    for size in args.sizes:  # written once, outside the measured processes
        model_dir(size)
    tokens = args.batch * args.seq
    print(f"LoRA r={RANK} on every linear layer, batch {args.batch} × {args.seq} tokens = {tokens} tokens per "
          f"pass, {os.cpu_count()} CPU cores, code from {_code_root()}", flush=True)
    results = []
    header = (f"{'model':5} {'matmul':6} {'params':>7} {'weights':>8} {'activ.':>7} {'LoRA×16':>8} {'overhead':>8} "
              f"{'predicted':>9} {'peak RSS':>9} {'setup peak':>10} {'s/step':>6}")
    print(header, flush=True)
    for size in args.sizes:
        for precision in args.precisions:
            steps = args.steps
            cmd = [sys.executable, __file__, "--child", size, precision, "--batch", str(args.batch),
                   "--seq", str(args.seq), "--steps", str(steps)]
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True,
                                  env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
            line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
            if proc.returncode or not line:
                sys.exit(f"{size} {precision} failed (exit {proc.returncode})")
            measured = json.loads(line[0][7:])
            shape = shape_figures(size, precision, tokens)
            predicted = (measured["overhead_bytes"] + shape["weights_bytes"] + shape["activations_bytes"]
                         + shape["lora_bytes"])
            row = {"size": size, "precision": precision, **shape, **measured, "predicted_bytes": predicted,
                   "seconds_per_step": measured["seconds_training"] / steps}
            results.append(row)
            gb = 1e9
            print(f"{size:5} {precision:6} {shape['parameters'] / 1e6:6.0f}M {shape['weights_bytes'] / gb:7.2f}G "
                  f"{shape['activations_bytes'] / gb:6.2f}G {shape['lora_bytes'] / gb:7.2f}G "
                  f"{measured['overhead_bytes'] / gb:7.2f}G {predicted / gb:8.2f}G "
                  f"{measured['peak_bytes'] / gb:8.2f}G {measured['setup_peak_bytes'] / gb:9.2f}G "
                  f"{row['seconds_per_step']:6.1f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def _code_root() -> str:
    import tunelab
    return str(Path(tunelab.__file__).resolve().parent.parent)


if __name__ == "__main__":
    main()
