"""Export times and sizes for a real fine-tune: SmolLM2-135M-Instruct, LoRA, two steps on 10 travel conversations
(the size of the files does not depend on how long it trained), exported in every format and quantisation.

    .venv/bin/python bench/export.py            # prints a Markdown table (docs/export.md has one)

Each export runs in this process, one after the other, through `tunelab.export.export_model`, the function
`tunelab export` calls; the time includes loading the base model and merging the adapter (every format but peft).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRAVEL = ROOT / "examples" / "travel"
CASES = [("peft", "f16", False), ("merged", "f16", False), ("gguf", "f16", True), ("gguf", "q8_0", True),
         ("gguf", "q4_0", True)]


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="tunelab-export-bench-"))
    home = os.environ.setdefault("TUNELAB_HOME", str(work / "home"))
    sys.path.insert(0, str(ROOT))
    from tunelab.cli.main import main as tunelab
    from tunelab.config import get_settings
    from tunelab.export import ExportRequest, export_model
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
    rows = []
    for fmt, quant, ollama in CASES:
        out = work / f"{fmt}-{quant}"
        started = time.perf_counter()
        files = export_model(registry, model_id, ExportRequest(fmt, quant=quant, ollama=ollama), out)
        seconds = time.perf_counter() - started
        total = sum(f.bytes for f in files)
        command = f"tunelab export MODEL --format {fmt}" + (f" --quant {quant}" if fmt == "gguf" else "") + (
            " --ollama" if ollama else "")
        rows.append(f"| `{command}` | {seconds:.1f} s | {total / 1e6:.1f} MB | {len(files)} |")
    print(f"TUNELAB_HOME={home}; files under {work}")
    print("| Command | Time | Size | Files |\n|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
