"""A real fine-tune as a LoRA GGUF beside its base GGUF, against the merged GGUF: SmolLM2-135M-Instruct, LoRA (rank
16 on every linear layer, tunelab's default), two steps on 10 travel conversations.

    .venv/bin/python bench/export_lora.py [--threads N]     # prints Markdown tables (docs/export.md has them)

It exports the base model (f16, q8_0), the fine-tune merged (f16, q8_0) and the fine-tune as gguf-lora, through
`tunelab.export.export_model` as `tunelab export` does; then, in llama.cpp (llama-cpp-python, 2 threads), compares
base f16 + LoRA with the merged f16 file on the lab-2 question (logits at every prompt position, 64 greedy tokens);
then one llama-server (--threads, default 2) on the q8_0 base with the adapter loaded decodes 128 tokens with the
adapter's scale at 1 and at 0, and another on the merged q8_0 file, three runs each (the median).
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRAVEL = ROOT / "examples" / "travel"
LLAMA_SERVER = Path(sys.executable).parent / "llama-server"


def fine_tune(work: Path):
    """Two LoRA steps, registered as a finished job registers its model; returns (registry, model id)."""
    from tunelab.cli.main import main as tunelab
    from tunelab.config import get_settings
    from tunelab.jobs.queue import Queue
    from tunelab.models.registry import Registry
    from tunelab.store.db import Database
    from tunelab.store.files import Files

    train = work / "train.jsonl"
    train.write_text("\n".join((TRAVEL / "train.jsonl").read_text().splitlines()[:10]) + "\n")
    try:
        tunelab(["train", "--train", str(train), "--epochs", "1", "--batch-size", "5", "--seed", "42",
                 "--suffix", "ft-travel", "--out", str(work / "run")])
    except SystemExit as done:
        if done.code not in (0, None):
            raise
    settings = get_settings()
    db = Database(settings.state_dir / "tunelab.db")
    db.migrate()
    registry = Registry(db, "local")
    file_id = Files(db, settings.state_dir / "files", settings.max_file_bytes).add_path(train, "train.jsonl",
                                                                                         "fine-tune")
    Queue(db).add("ftjob-bench", {"model": "SmolLM2-135M-Instruct", "base": "SmolLM2-135M-Instruct",
                                  "training_file": file_id, "validation_file": None}, status="succeeded")
    model_id = "ft:SmolLM2-135M-Instruct:local:ft-travel:bench001"
    with db.write() as conn:
        registry.add_fine_tuned(conn, model_id, job_id="ftjob-bench", base="SmolLM2-135M-Instruct",
                                parent="SmolLM2-135M-Instruct", method="lora", path=work / "run" / "adapter",
                                owned_by="local")
    return registry, model_id


def llama_run(model: Path, lora: Path | None, ids: list[int], n: int):
    """llama.cpp's logits at every prompt position and its n greedy tokens after the prompt."""
    import numpy as np
    from llama_cpp import Llama

    llm = Llama(model_path=str(model), lora_path=str(lora) if lora else None, n_ctx=1024, n_threads=2,
                logits_all=True, verbose=False)
    try:
        llm.eval(ids)
        prompt = np.array(llm.scores[:len(ids)])
        tokens = []
        for _ in range(n):
            tokens.append(int(llm.scores[llm.n_tokens - 1].argmax()))
            llm.eval(tokens[-1:])
        return prompt, tokens
    finally:
        llm.close()


def served_logits(registry, model_id: str, ids: list[int]):
    """tunelab's fp32 base with the adapter attached, unmerged (what its own engine serves), at every position."""
    import torch
    from peft import PeftModel

    from tunelab.models.catalog import resolve_model
    from tunelab.models.load import load_causal_lm

    located = registry.locate(model_id)
    model = PeftModel.from_pretrained(load_causal_lm(resolve_model(located.base).path), located.weights).eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].numpy()


def decode_speed(args: list[str], ids: list[int], lora: list | None, threads: int, runs: int = 3) -> float:
    """Median tokens per second of llama-server decoding 128 tokens after the prompt."""
    import httpx2 as httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([str(LLAMA_SERVER), *args, "--host", "127.0.0.1", "--port", str(port), "-t",
                               str(threads), "-c", "1024", "-np", "1", "--no-webui"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as http:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if http.get("/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("llama-server did not start")
                time.sleep(0.2)
            speeds = []
            for _ in range(runs):
                body = {"prompt": ids, "n_predict": 128, "temperature": 0, "ignore_eos": True, "cache_prompt": False}
                if lora is not None:
                    body["lora"] = lora
                speeds.append(http.post("/completion", json=body).json()["timings"]["predicted_per_second"])
            return statistics.median(speeds)
    finally:
        server.terminate()
        server.wait(timeout=10)


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="llama-server's threads (on a machine shared with "
                        "other work, fewer threads than cores: llama.cpp's threads spin while they wait)")
    threads = parser.parse_args().threads
    work = Path(tempfile.mkdtemp(prefix="tunelab-export-lora-bench-"))
    os.environ.setdefault("TUNELAB_HOME", str(work / "home"))
    sys.path.insert(0, str(ROOT))
    from transformers import AutoTokenizer

    from tunelab.export import ExportRequest, export_model

    registry, model_id = fine_tune(work)
    files, rows = {}, []
    for name, model, fmt, quant in [("base f16", "SmolLM2-135M-Instruct", "gguf", "f16"),
                                    ("base q8_0", "SmolLM2-135M-Instruct", "gguf", "q8_0"),
                                    ("merged f16", model_id, "gguf", "f16"), ("merged q8_0", model_id, "gguf", "q8_0"),
                                    ("lora", model_id, "gguf-lora", "f16")]:
        out = work / name.replace(" ", "-")
        started = time.perf_counter()
        exported = export_model(registry, model, ExportRequest(fmt, quant=quant), out)
        seconds = time.perf_counter() - started
        files[name] = out / exported[0].name
        command = f"tunelab export {'BASE' if model != model_id else 'MODEL'} --format {fmt}" + (
            f" --quant {quant}" if fmt == "gguf" else "")
        rows.append(f"| `{command}` | {seconds:.1f} s | {exported[0].bytes / 1e6:.1f} MB |")
    print(f"files under {work}; load average {os.getloadavg()[0]:.1f}")
    print("| Command | Time | Size |\n|---|---|---|\n" + "\n".join(rows))

    question = json.loads((TRAVEL / "prompts.jsonl").read_text().splitlines()[2])["messages"]
    system = (TRAVEL / "system.txt").read_text().strip()
    tokenizer = AutoTokenizer.from_pretrained(work / "run" / "adapter")
    ids = tokenizer.apply_chat_template([{"role": "system", "content": system}, *question],
                                        add_generation_prompt=True, return_dict=True)["input_ids"]
    with_lora, lora_tokens = llama_run(files["base f16"], files["lora"], ids, 64)
    merged, merged_tokens = llama_run(files["merged f16"], None, ids, 64)
    base, base_tokens = llama_run(files["base f16"], None, ids, 64)
    served = served_logits(registry, model_id, ids)

    def agree(a: list[int], b: list[int]) -> int:
        return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a))

    print(f"\nlab-2 with the system message, a prompt of {len(ids)} tokens; llama.cpp, f16 files:\n"
          "| Compared | max abs logit difference over the prompt | greedy tokens equal (of 64) |\n|---|---|---|\n"
          f"| base + LoRA GGUF vs merged GGUF | {abs(with_lora - merged).max():.3f} | "
          f"{agree(lora_tokens, merged_tokens)} |\n"
          f"| base + LoRA GGUF vs tunelab's fp32 base + adapter | {abs(with_lora - served).max():.3f} | |\n"
          f"| merged GGUF vs tunelab's fp32 base + adapter | {abs(merged - served).max():.3f} | |\n"
          f"| base GGUF alone vs merged GGUF (what the fine-tune changes) | {abs(base - merged).max():.3f} | "
          f"{agree(base_tokens, merged_tokens)} |")

    lora_args = ["-m", str(files["base q8_0"]), "--lora", str(files["lora"]), "--lora-init-without-apply"]
    speeds = {"base q8_0 + LoRA, scale 1": decode_speed(lora_args, ids, [{"id": 0, "scale": 1.0}], threads),
              "base q8_0 + LoRA, scale 0": decode_speed(lora_args, ids, [{"id": 0, "scale": 0.0}], threads),
              "merged q8_0": decode_speed(["-m", str(files["merged q8_0"])], ids, None, threads)}
    print(f"\nload average {os.getloadavg()[0]:.1f}\n| llama-server, {threads} threads | tokens/s (median of 3) "
          "|\n|---|---|")
    for name, speed in speeds.items():
        print(f"| {name} | {speed:.1f} |")


if __name__ == "__main__":
    main()
