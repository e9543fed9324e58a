"""A GGUF file of each architecture imports into tunelab and computes what the model it was written from computes:
each tiny model (tests/tiny_models.py) is exported to GGUF f16 by tunelab's exporter (tunelab/export), imported back
with `tunelab models import` (models/catalog.py → models/convert.py), and the imported model's logits are the
original's with its matrices rounded to f16; its tokenizer, chat template, end-of-turn tokens and catalog entry are
the original's."""

from __future__ import annotations

import pytest
import torch

from tiny_models import ARCHITECTURES, build

CHAT = [{"role": "system", "content": "You are a travel assistant."},
        {"role": "user", "content": "Where should I go in May? I like quiet beaches and good food."}]


def registry():
    from tunelab.config import get_settings
    from tunelab.models.registry import Registry
    from tunelab.store.db import Database

    db = Database(get_settings().state_dir / "tunelab.db")
    db.migrate()
    return Registry(db, "local")


def rounded_to_f16(model):
    """`model` with every matrix rounded to f16, as the GGUF file stores it (norms and biases stay f32)."""
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.copy_(param.half().float())
    return model


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_a_gguf_file_imports_back_with_the_original_logits_template_and_end_of_turn(arch, tmp_path, home):
    from tunelab.export import ExportRequest, export_model
    from tunelab.inference.pool import EnginePool
    from tunelab.models.catalog import import_model
    from tunelab.models.load import load_causal_lm, load_tokenizer

    # Gemma 3 with six layers: five sliding-window layers, then a global one, the only layout a GGUF file states
    source = build(arch, tmp_path / arch, layers=6 if arch == "gemma3" else 2)
    original = import_model(source, f"tiny-{arch}")
    files = export_model(registry(), original.name, ExportRequest("gguf", quant="f16"), tmp_path / "gguf")
    imported = import_model(tmp_path / "gguf" / files[0].name, f"gguf-{arch}")

    for key in ("architecture", "context_length", "fast_paths", "parameter_count"):
        assert imported.meta[key] == original.meta[key], key
    assert imported.chat_template_source == "model"  # the file carried the template
    theirs, ours = load_tokenizer(source), load_tokenizer(imported.path)
    assert ours.chat_template == theirs.chat_template
    ids = theirs.apply_chat_template(CHAT, add_generation_prompt=True, return_tensors="pt",
                                     return_dict=True)["input_ids"]
    assert ours.apply_chat_template(CHAT, add_generation_prompt=True, return_tensors="pt",
                                    return_dict=True)["input_ids"].tolist() == ids.tolist()
    ends = [EnginePool._target(None, None, t).end_ids for t in (theirs, ours)]
    assert ends[0] == ends[1] and ends[0]

    with torch.no_grad():
        got = load_causal_lm(imported.path)(input_ids=ids).logits[0]
        expected = rounded_to_f16(load_causal_lm(source))(input_ids=ids).logits[0]
        exact = load_causal_lm(source)(input_ids=ids).logits[0]
    torch.testing.assert_close(got, expected, atol=2e-4, rtol=0)  # the file's weights, nothing else changed
    assert (got - exact).abs().max() < 0.05  # and within f16's rounding of the original
