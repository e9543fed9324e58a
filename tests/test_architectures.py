"""tunelab's two fast paths per architecture: for Qwen2 (attention biases, tied embeddings) the decoder's logits and
the lean training forward's loss and LoRA gradients are transformers' (fp32); for Gemma 3 both step aside with one
line saying why, and the generic paths give transformers' answers. The config-level decision (the one the catalog
shows) refuses what the block does not compute, and computes what it accepts."""

from __future__ import annotations

import logging
import threading

import pytest
import torch

from tiny_models import build
from tunelab.inference.decoder import LlamaDecoder
from tunelab.models.llama_block import refusals, unsupported


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Tiny random models of each architecture on disk: arch -> path (built on first use)."""
    root, built = tmp_path_factory.mktemp("arch"), {}

    def get(arch: str):
        if arch not in built:
            built[arch] = build(arch, root / arch)
        return built[arch]
    return get


def with_adapters(model):
    """Two adapters with random weights: one on every linear layer, one (another rank) on three of them."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    peft = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False),
                          adapter_name="wide")
    peft.add_adapter("narrow", LoraConfig(r=2, lora_alpha=8, target_modules=["q_proj", "k_proj", "down_proj"],
                                          init_lora_weights=False))
    return peft.eval()


def reference(peft, ids: list[int], adapter: str | None) -> torch.Tensor:
    """transformers' + PEFT's logits after `ids`."""
    with torch.no_grad():
        if adapter is None:
            with peft.disable_adapter():
                return peft(input_ids=torch.tensor([ids])).logits[0, -1]
        peft.set_adapter(adapter)
        return peft(input_ids=torch.tensor([ids])).logits[0, -1]


def decoder_matches_transformers(peft, vocab: int) -> None:
    """Prompts with and without each adapter, then several batched decode steps: the same logits (fp32, 1e-4)."""
    decoder = LlamaDecoder(peft, "fp32")
    for name in ("wide", "narrow"):
        decoder.add_adapter(name, peft)
    cache = decoder.new_cache(limit=256)
    rows = [([5, 6, 7, 8, 9], None), ([10, 11, 12], "wide"), (list(range(20, 45)), "narrow")]
    for ids, adapter in rows:
        logits = decoder.prefill(cache, cache.add_row(), ids, adapter)
        assert torch.allclose(logits, reference(peft, ids, adapter), atol=1e-4)
    for step in range(5):
        tokens = [(7 * step + 3 * i + 1) % vocab for i in range(len(rows))]
        logits = decoder.step(cache, tokens, [adapter for _, adapter in rows])
        for i, ((ids, adapter), token) in enumerate(zip(rows, tokens)):
            ids.append(token)
            assert torch.allclose(logits[i], reference(peft, ids, adapter), atol=1e-4), (step, i)


def test_qwen2_decodes_through_the_fast_decoder_with_transformers_logits(tiny):
    from tunelab.models.load import load_causal_lm

    model = load_causal_lm(tiny("qwen2")).eval()
    assert model.config.tie_word_embeddings and model.model.layers[0].self_attn.q_proj.bias.abs().sum() > 0
    assert unsupported(model) is None
    decoder_matches_transformers(with_adapters(model), model.config.vocab_size)


def llama(**config):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    sizes = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.2)
    model = LlamaForCausalLM(LlamaConfig(**{**sizes, **config})).eval()
    with torch.no_grad():  # biases, where the config asks for them, that change the answer
        for name, param in model.named_parameters():
            if name.endswith(".bias"):
                param.normal_(0, 0.2)
    return model


@pytest.mark.parametrize("config", [
    dict(attention_bias=True, mlp_bias=True),
    dict(head_dim=32),  # wider heads than hidden / heads
    dict(rope_scaling={"rope_type": "linear", "factor": 2.0}),
    dict(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                       "original_max_position_embeddings": 64}),
    dict(rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128}),
], ids=["biases", "head_dim", "linear_rope", "llama3_rope", "yarn_rope"])
def test_llama_config_variants_the_block_accepts_give_transformers_logits(config):
    model = llama(**config)
    assert unsupported(model) is None
    decoder_matches_transformers(with_adapters(model), model.config.vocab_size)


@pytest.mark.parametrize("config, training, decoding", [
    (dict(rope_scaling={"rope_type": "dynamic", "factor": 2.0}), "dynamic rotary", "dynamic rotary"),
    (dict(hidden_act="gelu"), "gelu activation", "gelu activation"),
    (dict(attention_dropout=0.1), "attention dropout", None),
], ids=["dynamic_rope", "gelu", "dropout"])
def test_what_the_block_does_not_compute_is_refused_with_the_reason(config, training, decoding):
    model = llama(**config)
    found = refusals(model.config.to_dict())
    assert (found["training"] is None) == (training is None) and (found["decoding"] is None) == (decoding is None)
    assert training is None or training in found["training"]
    assert decoding is None or decoding in found["decoding"]
    assert unsupported(model, "training") == found["training"] and unsupported(model, "decoding") == found["decoding"]


def test_qwen2_with_sliding_windows_and_raw_config_json_fields_step_aside():
    from transformers import Qwen2Config

    on = Qwen2Config(num_hidden_layers=4, max_window_layers=2, use_sliding_window=True, sliding_window=64)
    assert "sliding-window" in refusals(on.to_dict())["decoding"]
    # config.json as older transformers wrote it: rope_scaling with "type"; use_sliding_window without layer_types
    assert "longrope" in refusals({"model_type": "llama", "rope_scaling": {"type": "longrope"}})["training"]
    assert "sliding-window" in refusals({"model_type": "qwen2", "use_sliding_window": True})["training"]
    assert refusals({"model_type": "qwen2", "use_sliding_window": False, "sliding_window": 32768,
                     "hidden_act": "silu", "rope_scaling": None}) == {"training": None, "decoding": None}
    assert "mistral" in refusals({"model_type": "mistral"})["decoding"]


# --- the lean training forward ------------------------------------------------------------------------------------


def lora_model(path, precision="fp32"):
    """The recipe's LoRA model of `path` with random non-zero LoRA weights (so every one gets a gradient), and the
    lean forward that trains it (None where it steps aside)."""
    from tunelab.models.catalog import resolve_model
    from tunelab.train.config import parse_config, resolve
    from tunelab.train.recipe import setup_model

    from conftest import TRAVEL

    hp = resolve(parse_config(model=str(path), train_file=TRAVEL / "train.jsonl", seed=3, precision=precision), 12, 0)
    torch.manual_seed(0)
    model, lean = setup_model(resolve_model(str(path)), hp)
    for p in model.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.05)
    return model, lean


def samples(path, n=3):
    from tunelab.data.samples import load_samples
    from tunelab.models.load import load_tokenizer

    from conftest import TRAVEL

    return load_samples(TRAVEL / "train.jsonl", load_tokenizer(path), 1024)[:n]


def test_the_lean_forward_trains_qwen2_as_transformers_and_peft_do(tiny):
    from test_train import losses_and_gradients

    model, lean = lora_model(tiny("qwen2"))
    assert lean is not None and lean.layers[0]["qkv"][1] is not None  # the q/k/v biases are in the fused product
    batch = samples(tiny("qwen2"))
    for share in (False, True):
        (ours, our_grads), (theirs, their_grads) = (losses_and_gradients(model, forward, batch, share)
                                                    for forward in (lean, None))
        assert [c for _, c in ours] == [c for _, c in theirs]
        assert [loss for loss, _ in ours] == pytest.approx([loss for loss, _ in theirs], rel=1e-5)
        for name, grad in their_grads.items():
            assert (our_grads[name] - grad).abs().max() <= 1e-4 * grad.abs().max(), name


# --- Gemma 3: both fast paths step aside, the generic paths are transformers ----------------------------------


def test_gemma3_training_steps_aside_with_one_message_and_trains_as_transformers(tiny, tmp_path):
    from torch.nn import functional as F

    from test_train import Recorder
    from tunelab.train.config import parse_config
    from tunelab.train.recipe import loss_step, run

    path = tiny("gemma3")
    model, lean = lora_model(path)
    assert lean is None and "gemma3" in unsupported(model, "training")
    batch = samples(path, 2)
    with torch.no_grad():  # the recipe's loss is transformers' cross-entropy over the trained tokens
        loss, _ = loss_step(model, None, batch)
        expected = sum(F.cross_entropy(model(input_ids=s.input_ids[None]).logits[0, s.positions], s.targets,
                                       reduction="sum") for s in batch)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)

    from conftest import varied_chats, write_jsonl

    train = write_jsonl(tmp_path / "train.jsonl", varied_chats(10))  # short conversations: a quick run
    reporter = Recorder()
    result = run(parse_config(model=str(path), train_file=train, n_epochs=1, batch_size=5, seed=1,
                              out=tmp_path / "run"), reporter)
    assert result.steps == 2 and all(torch.isfinite(torch.tensor([m.train_loss for m in reporter.steps])))
    aside = [m for m in reporter.messages if "steps aside" in m]
    assert len(aside) == 1 and "gemma3" in aside[0] and "norms" in aside[0], reporter.messages


def answer(engine, prompt: list[int], adapter: str | None, n: int) -> list[int]:
    """`n` greedy tokens from the engine (no end-of-turn token: exactly n)."""
    from tunelab.inference.engine import SamplingParams

    done, finished = [], threading.Event()

    def on_event(kind, payload):
        if kind in ("done", "error"):
            done.append((kind, payload))
            finished.set()

    generation = engine.submit(prompt, SamplingParams(max_tokens=n, temperature=0), adapter=adapter, end_ids=set(),
                               on_event=on_event)
    assert finished.wait(60) and done[0] == ("done", "length"), done
    return generation.tokens


def test_gemma3_serving_steps_aside_once_and_answers_as_transformers(tiny, caplog, tmp_path):
    from peft import LoraConfig, get_peft_model

    from tunelab.inference.engine import Engine
    from tunelab.models.catalog import resolve_model
    from tunelab.models.load import load_causal_lm

    path = tiny("gemma3")
    with caplog.at_level(logging.WARNING, logger="tunelab.inference"):
        engine = Engine(resolve_model(str(path)), weights="fp32")
    try:
        aside = [r.getMessage() for r in caplog.records if r.name == "tunelab.inference"]
        assert len(aside) == 1 and "steps aside" in aside[0] and "gemma3" in aside[0], aside
        assert engine.decoder is None
        torch.manual_seed(2)  # an adapter with random weights, saved as a fine-tune's
        peft = get_peft_model(load_causal_lm(path), LoraConfig(r=4, target_modules="all-linear",
                                                              init_lora_weights=False)).eval()
        peft.save_pretrained(tmp_path / "adapter", safe_serialization=True)
        engine.attach("tuned", tmp_path / "adapter")

        prompt = list(range(10, 40))  # longer than the sliding window (16)
        with torch.no_grad():
            expected = {adapter: model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                                                eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
                        for adapter, model in (("tuned", peft), (None, load_causal_lm(path).eval()))}
        assert expected["tuned"] != expected[None]
        for adapter in (None, "tuned"):
            assert answer(engine, prompt, adapter, 12) == expected[adapter], adapter
        assert len(caplog.records) == 1  # nothing more was logged while answering
    finally:
        engine.close()


# --- the catalog ----------------------------------------------------------------------------------------------


def test_the_catalog_describes_built_ins_before_conversion_from_what_is_known():
    from tunelab.models.catalog import list_models
    from tunelab.models.registry import base_record

    from tunelab.api.models.protocol import Model

    rows = {r["name"]: r for r in list_models()}  # a fresh home: nothing converted yet
    smol, gemma = rows["SmolLM2-135M-Instruct"], rows["gemma-3-270m"]
    assert not smol["converted"] and not gemma["converted"]
    assert (smol["architecture"], smol["context_length"]) == ("llama", 8192)
    assert smol["fast_paths"] == {"training": True, "decoding": True, "note": None}
    assert (gemma["architecture"], gemma["context_length"]) == ("gemma3", 32768)
    assert gemma["fast_paths"]["training"] is gemma["fast_paths"]["decoding"] is False
    assert "gemma3" in gemma["fast_paths"]["note"]
    shown = Model(**base_record(gemma)).model_dump()  # what /v1/models sends
    assert shown["architecture"] == "gemma3" and shown["fast_paths"]["note"] == gemma["fast_paths"]["note"]


def test_a_model_without_a_chat_template_gets_its_architectures_default(tiny, tmp_path):
    import json
    import shutil

    from tunelab.models.catalog import import_model
    from tunelab.models.load import load_tokenizer
    from tunelab.models.templates import GEMMA

    for arch, default in (("gemma3", "gemma"), ("qwen2", "chatml")):
        bare = tmp_path / arch
        shutil.copytree(tiny(arch), bare)
        settings = json.loads((bare / "tokenizer_config.json").read_text())
        settings.pop("chat_template", None)
        (bare / "tokenizer_config.json").write_text(json.dumps(settings))
        (bare / "chat_template.jinja").unlink(missing_ok=True)
        assert not load_tokenizer(bare).chat_template
        model = import_model(bare, f"bare-{arch}")
        assert model.chat_template_source == f"tunelab default ({default})"
        assert model.meta["architecture"] == arch and model.meta["fast_paths"]["decoding"] is (arch != "gemma3")
        template = load_tokenizer(model.path).chat_template
        assert (template == GEMMA) is (arch == "gemma3")


def test_a_model_recorded_before_the_catalog_described_fast_paths_is_described_from_its_config(tiny):
    import json

    from tunelab.models.catalog import METADATA, import_model, list_models

    model = import_model(tiny("qwen2"), "older")
    meta = json.loads((model.path / METADATA).read_text())
    for key in ("architecture", "fast_paths"):
        del meta[key]
    (model.path / METADATA).write_text(json.dumps(meta))
    row = next(r for r in list_models() if r["name"] == "older")
    assert row["architecture"] == "qwen2" and row["fast_paths"] == {"training": True, "decoding": True, "note": None}


@pytest.mark.parametrize("arch, markers", [("llama", ["<|im_end|>"]), ("qwen2", ["<|im_end|>"]),
                                           ("gemma3", ["<eos>", "<end_of_turn>"])])
def test_serving_ends_each_architectures_turn_on_its_own_tokens(tiny, arch, markers):
    from tunelab.inference.pool import EnginePool
    from tunelab.models.load import load_tokenizer

    tokenizer = load_tokenizer(tiny(arch))
    target = EnginePool._target(None, None, tokenizer)
    assert target.end_ids == {tokenizer.convert_tokens_to_ids(m) for m in markers} and not target.end_strings
