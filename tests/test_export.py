"""Export round trips on tiny random models of each architecture (tests/tiny_models.py), each with a real LoRA
adapter registered the way a finished job registers its model: the merged model equals base + adapter, the PEFT
export loads back into the same model, the GGUF file read back by transformers' own GGUF reader gives the same
logits (f16) or the same greedy answer (q8_0), the Modelfile's template renders the training template's prompt,
and bad input fails with a clear error and leaves nothing behind."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import tiny_models
from tunelab.errors import InvalidRequest, ModelNotFound
from tunelab.export import FORMATS, QUANTS, ExportRequest, ExportedFile, export_model

CHAT = [{"role": "system", "content": "You are a travel assistant."},
        {"role": "user", "content": "Where should I go in May? I like quiet beaches and good food."}]


@pytest.fixture(scope="session")
def built(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """Per architecture: a tiny random model and a LoRA adapter on it with random, non-zero B matrices, saved as
    tunelab's trainer saves a fine-tune (PEFT's adapter files plus the tokenizer with its chat template).
    Gemma 3 has six layers, so its sliding-window layout (five local layers, then a global one) is the one a GGUF
    file states."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("export-models")
    found = {}
    for arch in tiny_models.ARCHITECTURES:
        base = tiny_models.build(arch, root / arch, layers=6 if arch == "gemma3" else 2)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        torch.manual_seed(1)
        peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                task_type="CAUSAL_LM"))
        with torch.no_grad():
            for name, param in peft.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.05)
        adapter = root / f"{arch}-run" / "adapter"
        peft.save_pretrained(adapter, safe_serialization=True)
        AutoTokenizer.from_pretrained(base).save_pretrained(adapter)
        found[arch] = (base, adapter)
    return found


class Lab:
    """A state database with the tiny base models imported into the catalog and their fine-tunes registered."""

    def __init__(self, home: Path, built: dict, training_rows: list[dict] | None = None):
        from tunelab.config import get_settings
        from tunelab.jobs.queue import Queue
        from tunelab.models.catalog import import_model
        from tunelab.models.registry import Registry
        from tunelab.store.db import Database
        from tunelab.store.files import Files

        settings = get_settings()
        self.db = Database(settings.state_dir / "tunelab.db")
        self.db.migrate()
        self.registry = Registry(self.db, "local")
        files = Files(self.db, settings.state_dir / "files", settings.max_file_bytes)
        data = home / "train.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in (training_rows or [])))
        training_file = files.add_path(data, "train.jsonl", "fine-tune")
        self.models = {}
        for arch, (base, adapter) in built.items():
            name = f"tiny-{arch}"
            import_model(base, name)
            job_id = f"ftjob-{arch}"
            model_id = f"ft:{name}:local:export:{arch}"
            Queue(self.db).add(job_id, {"model": name, "base": name, "training_file": training_file,
                                        "validation_file": None}, status="succeeded")
            with self.db.write() as conn:
                self.registry.add_fine_tuned(conn, model_id, job_id=job_id, base=name, parent=name, method="lora",
                                             path=adapter, owned_by="local")
            self.models[arch] = model_id


def base_plus_adapter(base: Path, adapter: Path):
    """What tunelab serves for a LoRA fine-tune: the fp32 base with the adapter attached, unmerged."""
    from peft import PeftModel

    from tunelab.models.load import load_causal_lm

    return PeftModel.from_pretrained(load_causal_lm(base), adapter).eval()


def prompt_ids(tokenizer) -> torch.Tensor:
    return tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, return_tensors="pt",
                                         return_dict=True)["input_ids"]


@torch.no_grad()
def logits(model, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids).logits[0]


@pytest.mark.parametrize("arch", tiny_models.ARCHITECTURES)
def test_merged_equals_base_plus_adapter(arch, built, home, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    lab = Lab(home, built)
    steps = []
    files = export_model(lab.registry, lab.models[arch], ExportRequest("merged"), tmp_path / "merged",
                         progress=lambda f, what: steps.append(f))
    names = {f.name for f in files}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= names
    assert steps[0] == 0.0 and steps[-1] == 1.0 and steps == sorted(steps)
    assert all(f.bytes == (tmp_path / "merged" / f.name).stat().st_size for f in files)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)
    assert not any("lora" in k for k in merged.state_dict())
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged")
    trained = AutoTokenizer.from_pretrained(built[arch][1])
    assert tokenizer.chat_template == trained.chat_template
    ids = prompt_ids(tokenizer)
    served = base_plus_adapter(*built[arch])
    expected, got = logits(served, ids), logits(merged, ids)
    assert (expected - logits(served.get_base_model().__class__.from_pretrained(built[arch][0]), ids)).abs().max() > 1e-2
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    # generate() stops at the end of the assistant's turn, as serving does
    marker = "<end_of_turn>" if arch == "gemma3" else "<|im_end|>"
    eos = GenerationConfig.from_pretrained(tmp_path / "merged").eos_token_id
    eos = eos if isinstance(eos, list) else [eos]
    assert tokenizer.convert_tokens_to_ids(marker) in eos
    assert not list(tmp_path.glob(".merged*"))


@pytest.mark.parametrize("arch", tiny_models.ARCHITECTURES)
def test_peft_export_loads_back_as_the_served_model(arch, built, home, tmp_path):
    from peft import PeftModel
    from transformers import AutoTokenizer

    from tunelab.models.load import load_causal_lm

    lab = Lab(home, built)
    files = export_model(lab.registry, lab.models[arch], ExportRequest("peft"), tmp_path / "peft")
    names = {f.name for f in files}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= names
    loaded = PeftModel.from_pretrained(load_causal_lm(built[arch][0]), tmp_path / "peft").eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "peft")
    assert tokenizer.chat_template == AutoTokenizer.from_pretrained(built[arch][1]).chat_template
    ids = prompt_ids(tokenizer)
    torch.testing.assert_close(logits(loaded, ids), logits(base_plus_adapter(*built[arch]), ids), atol=0, rtol=0)
