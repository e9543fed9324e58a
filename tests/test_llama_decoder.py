"""The Llama decoder computes what transformers computes: in fp32 the same logits, for prompts and batched decode
steps, with rows of different lengths joining and leaving, across LoRA adapters; int4 weights are used exactly
where a model's weights already lie on a 4-bit grid."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tunelab.inference.decoder import LlamaDecoder
from tunelab.inference.prompt_cache import BLOCK, PromptCache
from tunelab.models.llama_block import unsupported
from tunelab.inference.weights import Matrix, int4_grid


def snap_to_grid(weight: torch.Tensor) -> torch.Tensor:
    """What a Q4_1 GGUF holds: per group of 32 inputs, 16 evenly spaced levels from the group's minimum."""
    rows, cols = weight.shape
    groups = weight.reshape(rows, cols // 32, 32)
    low, high = groups.amin(-1, keepdim=True), groups.amax(-1, keepdim=True)
    step = (high - low) / 15
    return (torch.round((groups - low) / step) * step + low).reshape(rows, cols)


def build_model() -> LlamaForCausalLM:
    """A small Llama whose layers have 4-bit-grid weights (the LM head, tied to the embeddings, does not)."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, initializer_range=0.2)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            for linear in [*layer.self_attn.children(), *layer.mlp.children()]:
                if isinstance(linear, torch.nn.Linear):
                    linear.weight.copy_(snap_to_grid(linear.weight))
    return model


@pytest.fixture(scope="module")
def model():
    return build_model()


@pytest.fixture(scope="module")
def peft(model):
    """Two adapters with random weights: one on every linear layer, one (another rank) on three of them."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    peft = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False),
                          adapter_name="wide")
    peft.add_adapter("narrow", LoraConfig(r=2, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
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


def test_fp32_logits_match_transformers_while_rows_join_leave_and_mix_adapters(peft):
    decoder = LlamaDecoder(peft, "fp32")
    decoder.add_adapter("wide", peft)
    decoder.add_adapter("narrow", peft)
    cache = decoder.new_cache(limit=512, rows=1, width=8)  # small buffers: the answers below make them grow
    rows = [([5, 6, 7, 8, 9], None), ([10, 11, 12], "wide"), (list(range(20, 40)), "narrow"), ([30], "wide")]
    for ids, adapter in rows:
        logits = decoder.prefill(cache, cache.add_row(), ids, adapter)
        assert torch.allclose(logits, reference(peft, ids, adapter), atol=1e-4)
    for step in range(12):  # every row one token per step; row 1 leaves after step 3 (the last row moves up)
        tokens = [(7 * step + i) % 300 for i in range(len(rows))]
        logits = decoder.step(cache, tokens, [adapter for _, adapter in rows])
        for i, ((ids, adapter), token) in enumerate(zip(rows, tokens)):
            ids.append(token)
            assert torch.allclose(logits[i], reference(peft, ids, adapter), atol=1e-4), (step, i)
        if step == 3:
            cache.remove_row(1)
            rows[1] = rows.pop()
    assert cache.keys[0].shape[0] == 4 and cache.keys[0].shape[2] >= 32  # it grew


def test_a_prompt_continues_a_row_that_already_holds_tokens(peft):
    decoder = LlamaDecoder(peft, "fp32")
    cache = decoder.new_cache(limit=512)
    row = cache.add_row()
    decoder.prefill(cache, row, [4, 5, 6, 7], None)
    logits = decoder.prefill(cache, row, [8, 9, 10], None)  # e.g. a shared system message, then the question
    assert cache.lengths == [7]
    assert torch.allclose(logits, reference(peft, [4, 5, 6, 7, 8, 9, 10], None), atol=1e-4)


def test_a_long_prompt_goes_through_in_blocks_and_matches_transformers(peft):
    decoder = LlamaDecoder(peft, "fp32")
    decoder.add_adapter("wide", peft)
    cache = decoder.new_cache(limit=512)
    ids = [(11 * i) % 300 for i in range(BLOCK * 2 + 7)]  # two full blocks and a part
    for adapter in (None, "wide"):
        logits = decoder.prefill(cache, cache.add_row(), ids, adapter)
        assert torch.allclose(logits, reference(peft, ids, adapter), atol=1e-4)
    assert cache.lengths == [len(ids), len(ids)]


@pytest.mark.parametrize("fmt", ["fp32", "int4"])
def test_a_prompt_that_starts_like_an_earlier_one_reuses_its_blocks(peft, fmt):
    decoder = LlamaDecoder(peft, fmt, prompt_cache_bytes=2**20)
    fresh = LlamaDecoder(peft, fmt)  # no cache: every token computed
    decoder.add_adapter("wide", peft)
    system = [(7 * i) % 300 for i in range(BLOCK * 2 + 5)]
    first, second = system + [1, 2, 3], system + [9, 8, 7, 6]
    cache = decoder.new_cache(limit=512)
    decoder.prefill(cache, cache.add_row(), first, None)
    assert (decoder.prompt_cache.hits, decoder.prompt_cache.stored) == (0, 2)

    alone = decoder.new_cache(512)
    logits = decoder.prefill(alone, alone.add_row(), second, None)
    assert decoder.prompt_cache.hits == 2 and alone.lengths == [len(second)]  # both full blocks reused
    fresh_cache = fresh.new_cache(512)
    expected = fresh.prefill(fresh_cache, fresh_cache.add_row(), second, None)
    again = decoder.new_cache(512)  # the same prompt once more: every block cached, the same rest computed
    assert torch.equal(decoder.prefill(again, again.add_row(), second, None), logits)
    steps = decoder.step(alone, [5], [None])[0], fresh.step(fresh_cache, [5], [None])[0]
    if fmt == "fp32":
        assert torch.allclose(logits, reference(peft, second, None), atol=1e-4)
        assert torch.allclose(*steps, atol=1e-4)
    else:  # bf16 activations, and the rest of the prompt through another kernel: the same up to rounding
        for ours, theirs in ((logits, expected), steps):
            assert (ours - theirs).norm() / theirs.norm() < 0.1 and ours.argmax() == theirs.argmax()

    decoder.prefill(cache, cache.add_row(), second, "wide")  # another adapter: other keys and values
    assert decoder.prompt_cache.hits == 4 and decoder.prompt_cache.stored == 4
    decoder.remove_adapter("wide")
    assert len(decoder.prompt_cache._blocks) == 2


def test_prompts_processed_together_match_transformers_each(peft):
    """One pass for several prompts: empty rows and a row that holds tokens already, different adapters, rests
    of different lengths; each prompt attends over its own row only."""
    decoder = LlamaDecoder(peft, "fp32", prompt_cache_bytes=2**20)
    for name in ("wide", "narrow"):
        decoder.add_adapter(name, peft)
    cache = decoder.new_cache(limit=512)
    held = cache.add_row()
    decoder.prefill(cache, held, [4, 5, 6, 7], None)
    system = [(7 * i) % 300 for i in range(BLOCK * 2 + 3)]
    prompts = [(held, [8, 9, 10], None), (cache.add_row(), system + [1], None),
               (cache.add_row(), system + [2, 3, 4, 5], "wide"), (cache.add_row(), [30, 31], "narrow"),
               (cache.add_row(), system[:BLOCK * 2], None)]  # a prompt of whole blocks
    logits = decoder.prefill_rows(cache, prompts)
    assert logits.shape == (len(prompts), 300)
    assert torch.allclose(logits[0], reference(peft, [4, 5, 6, 7, 8, 9, 10], None), atol=1e-4)
    for out, (_, ids, adapter) in zip(logits[1:], prompts[1:]):
        assert torch.allclose(out, reference(peft, ids, adapter), atol=1e-4), (ids, adapter)
    assert cache.lengths == [7] + [len(ids) for _, ids, _ in prompts[1:]]
    # The last prompt found the first block that the second computed in the same call (its second block is the
    # rest: computed, and already cached); the third's blocks are another adapter's.
    assert decoder.prompt_cache.hits == 1 and decoder.prompt_cache.stored == 2 + 2


def test_a_prompt_computes_the_same_alone_or_with_others(peft):
    """Where tunelab's kernels run, the rests of prompts processed together go through them row by row, so each
    prompt's logits are bit-identical to those it gets alone (and a seeded answer does not depend on what
    arrived with it); elsewhere they agree up to bf16 rounding."""
    decoder, alone = (LlamaDecoder(peft, "int4", prompt_cache_bytes=2**20) for _ in range(2))
    system = [(5 * i) % 300 for i in range(BLOCK + 4)]
    prompts = [system + [1], system + [2, 3], system + list(range(40, 52)), [9, 9, 9], system[:BLOCK] + [6]]
    cache = decoder.new_cache(512)
    together = decoder.prefill_rows(cache, [(cache.add_row(), ids, None) for ids in prompts])
    each = torch.stack([alone.prefill(c, c.add_row(), ids, None) for ids in prompts for c in [alone.new_cache(512)]])
    if decoder.layers[0].matrices["qkv"].amx is not None:
        assert torch.equal(together, each)
    else:
        assert ((together - each).norm(dim=-1) / each.norm(dim=-1)).max() < 0.05
        assert torch.equal(together.argmax(-1), each.argmax(-1))


def test_the_prompt_cache_keeps_the_most_recent_blocks_within_its_memory():
    block = [(torch.zeros(2, BLOCK, 4), torch.zeros(2, BLOCK, 4))]
    size = 2 * block[0][0].nbytes
    cache = PromptCache(capacity_bytes=int(2.5 * size))
    for n in range(3):
        cache.add(list(range(n, n + BLOCK)), None, block)
    assert cache.bytes == 2 * size and cache.cached_blocks(list(range(BLOCK + 1)), None) == []  # evicted
    assert len(cache.cached_blocks(list(range(2, BLOCK + 3)), None)) == 1
    assert cache.cached_blocks(list(range(2, BLOCK + 3)), "an adapter") == []
    assert cache.cached_blocks(list(range(2, BLOCK + 2)), None) == []  # never the prompt's last token


def test_int4_only_where_the_weights_are_on_a_grid_and_close_to_fp32(model):
    decoder = LlamaDecoder(model, "int4")
    assert decoder.fmt == "int4"
    assert {m.fmt for layer in decoder.layers for m in layer.matrices.values()} == {"int4"}
    assert decoder.head.fmt == "int8"  # the tied embeddings are not 4-bit
    fp32 = LlamaDecoder(model, "fp32")
    assert decoder.weight_bytes < fp32.weight_bytes / 4
    ids = list(range(40, 80))
    logits = [d.prefill(c, c.add_row(), ids, None) for d in (decoder, fp32) for c in [d.new_cache(512)]]
    assert (logits[0] - logits[1]).norm() / logits[1].norm() < 0.03  # bf16 activations, int8 head
    assert logits[0][logits[1].argmax()] == logits[0].max()  # the same choice, up to a tie in bf16


def test_the_4bit_grid_is_recovered_exactly_and_off_grid_weights_are_refused():
    torch.manual_seed(2)
    weight = snap_to_grid(torch.randn(32, 64))
    codes, step, low = int4_grid(weight)
    rebuilt = (codes.reshape(32, 2, 32) * step[..., None] + low[..., None]).reshape(32, 64)
    assert codes.min() == 0 and codes.max() == 15 and torch.allclose(rebuilt, weight, atol=1e-6)
    assert int4_grid(torch.randn(32, 64)) is None  # an ordinary (fully fine-tuned) weight: never rounded
    assert int4_grid(torch.randn(32, 48)) is None  # inputs not a multiple of 32
    assert Matrix(torch.randn(32, 64), None, "int4").fmt == "int8"
    matrix = Matrix(weight, torch.randn(32), "int4")
    x = torch.randn(3, 64)
    assert matrix.fmt == "int4"
    exact = torch.nn.functional.linear(x, weight, matrix.bias.float())
    assert ((matrix(x.bfloat16()).float() - exact).norm() / exact.norm()) < 0.01


def test_architectures_it_does_not_know_are_left_to_transformers():
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    gemma = Gemma3ForCausalLM(Gemma3TextConfig(vocab_size=100, hidden_size=32, intermediate_size=64, head_dim=16,
                                               num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
    assert "gemma3" in unsupported(gemma)


def test_adapters_it_cannot_apply_are_refused_by_name():
    from peft import LoraConfig, get_peft_model

    dora = get_peft_model(build_model(), LoraConfig(r=2, target_modules=["q_proj"], use_dora=True),
                          adapter_name="dora")
    with pytest.raises(ValueError, match="DoRA"):
        LlamaDecoder(dora, "fp32").add_adapter("dora", dora)
