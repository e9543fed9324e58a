"""The frozen weights of a LoRA fine-tune exist once: the lean forward's fused matrices are the PEFT base layers'
weights, not a copy beside them (a copy costs a whole model: +0.5 GB for SmolLM2 in fp32, docs/benchmarks.md)."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
import torch

from tunelab.data.samples import load_samples
from tunelab.models.catalog import resolve_model
from tunelab.models.load import load_tokenizer
from tunelab.train.config import parse_config, resolve
from tunelab.train.recipe import loss_step, setup_model
from conftest import TRAVEL, build_tiny_model


@pytest.fixture
def train_file(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join((TRAVEL / "train.jsonl").read_text().splitlines()[:12]) + "\n")
    return path


def lora_model(tiny_model, train_file, precision):
    hp = resolve(parse_config(model=str(tiny_model), train_file=train_file, batch_size=4, seed=0,
                              precision=precision), 12, 0)
    torch.manual_seed(0)
    return setup_model(resolve_model(str(tiny_model)), hp)


def storages(tensors) -> dict[int, int]:
    """Bytes of each distinct storage under `tensors`, by address."""
    return {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_fused_weights_are_the_base_layers_weights(tiny_model, train_file, precision):
    model, lean = lora_model(tiny_model, train_file, precision)
    assert lean is not None
    fused = [t for layer in lean.layers for weight, bias, _ in layer.values() for t in (weight, bias)
             if t is not None]
    parameters = list({id(p): p for p in model.parameters()}.values())  # a tied head counted once
    held = storages(parameters)
    # every fused matrix is a parameter's storage, and no storage is larger than the parameters viewing it
    assert set(storages(fused)) <= set(held)
    assert sum(held.values()) == sum(p.numel() * p.element_size() for p in parameters)
    # so what the model and its lean forward hold, together, is one copy of the weights
    assert sum(storages(fused + parameters).values()) == sum(p.numel() * p.element_size() for p in parameters)
    # each projection's base weight is its rows of the fused matrix, in the run's precision
    dtype = torch.float32 if precision == "fp32" else torch.bfloat16
    for layer in lean.layers:
        for weight, _, modules in layer.values():
            rows = torch.cat([m.base_layer.weight for m in modules])
            assert rows.dtype == dtype and torch.equal(rows, weight)
            assert modules[0].base_layer.weight.data_ptr() == weight.data_ptr()
    if precision == "fp32":  # the tied head and the embeddings stay one tensor
        causal = model.get_base_model()
        assert causal.lm_head.weight is causal.model.embed_tokens.weight


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_transformers_forward_still_computes_what_the_lean_forward_does(tiny_model, train_file, precision):
    """With the base weights now views of the fused ones (bf16 ones in a bf16 run), transformers' forward through
    PEFT, which a run falls back to where the lean forward steps aside, gives the same loss."""
    model, lean = lora_model(tiny_model, train_file, precision)
    samples = load_samples(train_file, load_tokenizer(tiny_model), 1024)
    with torch.no_grad():
        ours, _ = loss_step(model, lean, samples[:4])
        theirs, _ = loss_step(model, None, samples[:4])
    assert torch.allclose(ours, theirs, rtol=1e-5 if precision == "fp32" else 1e-2)


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads the process's memory map (Linux)")
def test_the_model_file_is_let_go_once_the_weights_are_fused(tmp_path, train_file):
    """transformers loads the safetensors file as a memory map whose pages, once read, stay resident while any
    tensor of it lives; the fusion reads every page, so a mapping still held would be a second copy in memory.
    The model is this test's own: other tests' engines may map the shared tiny model for as long as they live."""
    own = build_tiny_model(tmp_path / "own")
    model, lean = lora_model(own, train_file, "fp32")
    gc.collect()
    weights = str((own / "model.safetensors").resolve())
    assert not [line for line in Path("/proc/self/maps").read_text().splitlines() if line.endswith(weights)]
    assert lean is not None and model.get_base_model().lm_head.weight is lean.embed.weight
