"""Training throughput: tunelab's recipe vs TRL `SFTTrainer` + PEFT, side by side on the same data and model.

    make bench                     # = .venv/bin/python bench/train_throughput.py
    .venv/bin/python bench/train_throughput.py --examples 64 --batch-size 4

Both fine-tune SmolLM2-135M-Instruct with LoRA (same rank, alpha, target modules, learning rate and epochs) on
the travel data set; everything else is each tool's default: TRL's gradient checkpointing, padding to the longest
in the batch, loss over the whole sequence and batch size 8; tunelab's "auto" batch size (2 for 64–127 examples,
4 for 128–255). `--batch-size N` sets the same batch size for both. Each runs in its own process, so peak memory
(max RSS) is its own. Throughput counts real chat-template tokens, unpadded, for both:
Σ tokens per conversation × epochs / seconds of training.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL = "SmolLM2-135M-Instruct"


def real_tokens(train: Path, epochs: int) -> int:
    from tunelab.data.samples import render_examples
    from tunelab.data.validate import validate_file
    from tunelab.models.catalog import resolve_model
    from tunelab.models.load import load_tokenizer

    tokenizer = load_tokenizer(resolve_model(MODEL).path)
    chats = render_examples(validate_file(train).examples, tokenizer)
    return sum(len(c.input_ids) for c in chats) * epochs


def run_tunelab(train: Path, args) -> dict:
    from tunelab.train.config import parse_config
    from tunelab.train.recipe import run

    class Quiet:
        def start(self, *a): pass
        def step(self, m): print(f"  tunelab step {m.step}/{m.total_steps} loss {m.train_loss:.3f}", flush=True)
        def message(self, text): pass
        def checkpoint(self, *a): pass
        def finish(self): pass

    out = Path(tempfile.mkdtemp()) / "run"
    config = parse_config(model=MODEL, train_file=train, n_epochs=args.epochs, batch_size=args.batch_size or "auto",
                          seed=0, lora_rank=args.rank, out=out)
    started = time.perf_counter()
    result = run(config, Quiet())
    hyperparameters = json.loads((out / "config.json").read_text())["hyperparameters"]
    return {"seconds": time.perf_counter() - started, "final_loss": result.metrics["train_loss"],
            "batch_size": hyperparameters["batch_size"]}


def run_trl(train: Path, args) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from tunelab.config import get_settings
    from tunelab.models.load import load_causal_lm, load_tokenizer
    from tunelab.train.config import BASE_LEARNING_RATE

    path = get_settings().models_dir / MODEL
    rows = [json.loads(line) for line in train.read_text().splitlines() if line.strip()]
    batch = {"per_device_train_batch_size": args.batch_size} if args.batch_size else {}
    config = SFTConfig(output_dir=tempfile.mkdtemp(), num_train_epochs=args.epochs, **batch,
                       learning_rate=BASE_LEARNING_RATE["lora"], seed=0, report_to=[], save_strategy="no",
                       logging_steps=1, use_cpu=True)
    lora = LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.0, target_modules="all-linear",
                      task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=load_causal_lm(path), args=config, train_dataset=Dataset.from_list(rows),
                         processing_class=load_tokenizer(path), peft_config=lora)
    started = time.perf_counter()
    output = trainer.train()
    return {"seconds": time.perf_counter() - started, "final_loss": output.training_loss,
            "batch_size": config.per_device_train_batch_size, "gradient_checkpointing": config.gradient_checkpointing, "padding_free": config.padding_free,
            "packing": config.packing}


def child(which: str, train: Path, args) -> None:
    result = (run_tunelab if which == "tunelab" else run_trl)(train, args)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=160, help="first N travel training conversations [all]")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, help="the same for both [default: each tool's own]")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--only", choices=["tunelab", "trl"])
    parser.add_argument("--child", choices=["tunelab", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--train", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.train, args)
        return

    from tunelab.models.catalog import resolve_model

    resolve_model(MODEL)  # convert once, outside the timings
    lines = (ROOT / "examples/travel/train.jsonl").read_text().splitlines()[: args.examples]
    train = Path(tempfile.mkdtemp()) / "train.jsonl"
    train.write_text("\n".join(lines) + "\n")
    tokens = real_tokens(train, args.epochs)
    print(f"{len(lines)} conversations × {args.epochs} epoch(s) = {tokens:,} real tokens; LoRA r={args.rank}, "
          f"batch size {args.batch_size or 'each default'}, {os.cpu_count()} CPU cores", flush=True)

    results = {}
    for which in [args.only] if args.only else ["tunelab", "trl"]:
        cmd = [sys.executable, __file__, "--child", which, "--train", str(train), "--epochs", str(args.epochs),
               "--rank", str(args.rank)] + (["--batch-size", str(args.batch_size)] if args.batch_size else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
        line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
        if proc.returncode or not line:
            sys.exit(f"{which} failed:\n{proc.stderr[-3000:]}")
        results[which] = json.loads(line[0][7:])
        results[which]["tokens_per_second"] = tokens / results[which]["seconds"]
        r = results[which]
        print(f"{which:8} batch {r['batch_size']}: {r['tokens_per_second']:7.1f} tokens/s  {r['seconds']:7.1f} s  "
              f"peak RSS {r['peak_rss_mb']:6.0f} MB  final loss {r['final_loss']:.3f}", flush=True)
    if len(results) == 2:
        speedup = results["tunelab"]["tokens_per_second"] / results["trl"]["tokens_per_second"]
        memory = results["tunelab"]["peak_rss_mb"] / results["trl"]["peak_rss_mb"]
        print(f"tunelab / TRL: {speedup:.2f}× tokens/s, {memory:.2f}× peak memory")
        print(json.dumps({"tokens": tokens, **results}))


if __name__ == "__main__":
    main()
