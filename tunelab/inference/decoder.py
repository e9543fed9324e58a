"""A lean forward pass for Llama and Qwen2 models (SmolLM2, Qwen2.5), used for their prompts and decode steps.

transformers' forward serves every model and every feature: one decode step of SmolLM2-135M runs thousands
of small tensor operations through it, and on a 2-core CPU their overhead costs as much as reading the
weights. This pass does only what a Llama layer does, with fewer, larger operations (the layers are the Llama
block the training forward runs too, models/llama_block.py): q, k and v come from one fused matrix and gate and
up from another (here `weights.Matrix`, int4/int8/fp32), rotary embeddings are applied to q and k together, keys
and values go into preallocated buffers (`kv.KVCache`), and a decode step's attention is one
`scaled_dot_product_attention` call per layer over all rows. Prompts are processed several at once
(`prefill_rows`): their tokens share the matrix products, and each prompt attends over its own row.

LoRA adapters stay separate from the shared base weights: each row of a batch may use its own fine-tune. For
every fused matrix an adapter keeps its A matrices side by side and its B matrices block-diagonal (scaled), so
one pair of small fp32 matrix products per matrix applies it; rows are grouped by adapter once per step.

The tests check it against transformers' forward: in fp32, the same logits within 1e-4, with and without
adapters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from ..models.llama_block import (PROJECTIONS, Dims, base_linear, fused_lora, fused_weight, layer_norms,
                                  projection_modules, rms_norm, rotary_tables, run_layers)
from .kv import KVCache
from .prompt_cache import BLOCK, PromptCache
from .weights import Matrix


@dataclass
class LoRA:
    """One adapter's update of one fused matrix: `(x @ down) @ up`, fp32."""

    down: torch.Tensor  # [in, total rank]: the A matrices of the fused projections, side by side
    up: torch.Tensor  # [total rank, out]: their B matrices, block-diagonal, times each one's scaling


class Layer:
    def __init__(self, layer, fmt: str):
        self.matrices = {key: Matrix(*fused_weight(projection_modules(layer, key)), fmt) for key in PROJECTIONS}
        self.dtype = self.matrices["qkv"].dtype
        self.norms = tuple((weight.to(self.dtype), eps) for weight, eps in layer_norms(layer))
        self.adapters: dict[str, dict[str, LoRA]] = {}


class LlamaDecoder:
    def __init__(self, model, fmt: str, prompt_cache_bytes: int = 0):
        self.dims = Dims.of(model.config)
        inner = model.get_base_model().model if hasattr(model, "get_base_model") else model.model
        self.layers = [Layer(layer, fmt) for layer in inner.layers]
        self.norms = [layer.norms for layer in self.layers]
        self.dtype = self.layers[0].dtype
        self.fmt = self.layers[0].matrices["qkv"].fmt
        self.embed = inner.embed_tokens.weight.detach().to(self.dtype)
        self.norm = (inner.norm.weight.detach().to(self.dtype), inner.norm.variance_epsilon)
        head = model.get_output_embeddings()
        self.head = Matrix(base_linear(head).weight, base_linear(head).bias, "int8" if fmt == "int4" else fmt)
        self.rotary = inner.rotary_emb
        self.prompt_cache = PromptCache(prompt_cache_bytes) if prompt_cache_bytes > 0 else None

    def new_cache(self, limit: int, **sizes) -> KVCache:
        return KVCache(len(self.layers), self.dims.kv_heads, self.dims.head_dim, self.dtype, limit=limit, **sizes)

    @property
    def weight_bytes(self) -> int:
        """What one decode step reads from the weights."""
        return sum(m.nbytes for layer in self.layers for m in layer.matrices.values()) + self.head.nbytes

    # --- adapters ---

    @torch.no_grad()
    def add_adapter(self, name: str, peft_model) -> None:
        """Take adapter `name`'s LoRA weights from a PeftModel that has it loaded."""
        config = peft_model.peft_config[name]
        if getattr(config, "use_dora", False) or getattr(config, "lora_bias", False):
            raise ValueError("adapters with DoRA or LoRA biases are not supported by the Llama decoder")
        inner = peft_model.get_base_model().model
        if any(name in getattr(module, "lora_embedding_A", {}) for module in peft_model.modules()) or \
                name in getattr(peft_model.get_base_model().lm_head, "lora_A", {}):
            raise ValueError("adapters on the embeddings or the LM head are not supported by the Llama decoder")
        for ours, theirs in zip(self.layers, inner.layers):
            updates = {}
            for key in PROJECTIONS:
                lora = fused_lora(projection_modules(theirs, key), name)
                if lora is not None:  # laid out for x @ down @ up
                    updates[key] = LoRA(lora[0].t().contiguous(), lora[1].t().contiguous())
            ours.adapters[name] = updates

    def remove_adapter(self, name: str) -> None:
        for layer in self.layers:
            layer.adapters.pop(name, None)
        if self.prompt_cache is not None:
            self.prompt_cache.forget(name)

    # --- forward ---

    @torch.no_grad()
    def prefill(self, cache: KVCache, row: int, ids: list[int], adapter: str | None) -> torch.Tensor:
        """Process `ids` after what `row` already holds; return the logits [vocab] after the last one."""
        return self.prefill_rows(cache, [(row, ids, adapter)])[0]

    @torch.no_grad()
    def prefill_rows(self, cache: KVCache, prompts: list[tuple[int, list[int], str | None]]) -> torch.Tensor:
        """Process each `(row, ids, adapter)` of `prompts` after what its row already holds; return the logits
        [len(prompts), vocab] after each one's last token.

        Into an empty row, the blocks of the prompt that the prompt cache holds are copied instead of computed,
        and the full blocks computed are offered to it (prompt_cache.py), at once, so that a later prompt of the
        same call that starts the same way finds them. Each prompt's uncached blocks are computed in a pass of
        their own; then the rest of every prompt (1 to BLOCK tokens each) in one pass together, whose products
        compute each row as they would alone (`invariant`) and whose attention is each prompt's own. So the same
        prompt gets the same logits, to the bit, whether its blocks were cached or not and whatever prompts
        shared its pass: a seeded request repeats exactly."""
        rests, offers = [], []
        for row, ids, adapter in prompts:
            start = cache.lengths[row]
            cache.reserve(start + len(ids))
            if start or self.prompt_cache is None:  # a row that holds tokens already: what they are is unknown here
                rests.append((row, ids, adapter))
                continue
            reused = self._copy_cached_blocks(cache, row, ids, adapter)
            blocks_end = (len(ids) - 1) // BLOCK * BLOCK  # the full blocks before the prompt's last token
            if blocks_end > reused:  # the blocks first, then the rest: just what a later hit on all of them computes
                self._pass(cache, [(row, ids[reused:blocks_end], adapter)], logits=False)
                self._offer_blocks(cache, row, ids[:blocks_end], adapter, reused)
            rests.append((row, ids[max(reused, blocks_end):], adapter))
            if len(ids) % BLOCK == 0:  # the rest is a full block too
                offers.append((row, ids, adapter, len(ids) - BLOCK))
        logits = self._pass(cache, rests)
        for row, ids, adapter, computed_from in offers:
            self._offer_blocks(cache, row, ids, adapter, computed_from)
        return logits

    def _copy_cached_blocks(self, cache: KVCache, row: int, ids: list[int], adapter: str | None) -> int:
        """Fill the empty `row` with the cached blocks `ids` starts with; how many tokens they hold."""
        blocks = self.prompt_cache.cached_blocks(ids, adapter)
        for i in range(len(self.layers) if blocks else 0):
            keys = torch.cat([block[i][0] for block in blocks], dim=1)[None]
            values = torch.cat([block[i][1] for block in blocks], dim=1)[None]
            cache.write_prompt(i, row, keys, values)
        cache.advance(row, len(blocks) * BLOCK)
        return len(blocks) * BLOCK

    def _offer_blocks(self, cache: KVCache, row: int, ids: list[int], adapter: str | None, start: int) -> None:
        """Offer the prompt cache the full blocks of `ids` from token `start` on, which `row` now holds."""
        for end in range(start + BLOCK, len(ids) + 1, BLOCK):
            self.prompt_cache.add(ids[:end], adapter, [(keys[row, :, end - BLOCK:end].clone(),
                                                        values[row, :, end - BLOCK:end].clone())
                                                       for keys, values in zip(cache.keys, cache.values)])

    def _pass(self, cache: KVCache, segments: list[tuple[int, list[int], str | None]],
              logits: bool = True) -> torch.Tensor | None:
        """One forward pass over the tokens of every `(row, ids, adapter)` segment, each after what its row holds.

        The segments' tokens go through the layers as one sequence, so the products take them all at once;
        attention is computed per segment, over its own row of the KV cache."""
        starts = [cache.lengths[row] for row, _, _ in segments]
        sizes = [len(ids) for _, ids, _ in segments]
        x = F.embedding(torch.tensor([[t for _, ids, _ in segments for t in ids]]), self.embed)
        positions = torch.cat([torch.arange(start, start + size) for start, size in zip(starts, sizes)])[None]
        ends = torch.tensor(sizes).cumsum(0).tolist()
        # Where a row holds earlier tokens, each new token sees them and the new ones before it.
        masks = [torch.arange(start + size)[None, :] <= torch.arange(start, start + size)[:, None] if start else None
                 for start, size in zip(starts, sizes)]

        def attend(i, q, k, v):  # q [1, heads, tokens, dim], k and v [1, kv_heads, tokens, dim]
            out = []
            for (row, _, _), start, size, end, mask in zip(segments, starts, sizes, ends, masks):
                part = slice(end - size, end)
                cache.write_prompt(i, row, k[:, :, part], v[:, :, part])
                keys, values = cache.view(i, slice(row, row + 1), start + size)
                out.append(F.scaled_dot_product_attention(q[:, :, part], keys, values, attn_mask=mask,
                                                          is_causal=mask is None,
                                                          enable_gqa=self.dims.kv_heads != self.dims.heads))
            return torch.cat(out, dim=2) if len(out) > 1 else out[0]

        adapters = [adapter for (_, _, adapter), size in zip(segments, sizes) for _ in range(size)]
        out = self._forward(x, positions, attend, _groups(adapters), logits=logits, invariant=True,
                            last=torch.tensor(ends) - 1 if logits else None)
        for (row, _, _), size in zip(segments, sizes):
            cache.advance(row, size)
        return out

    @torch.no_grad()
    def step(self, cache: KVCache, ids: list[int], adapters: list[str | None]) -> torch.Tensor:
        """One token for every row of `cache` (`ids[i]` for row i); returns the logits [rows, vocab]."""
        lengths = cache.lengths
        width = max(lengths) + 1
        cache.reserve(width)
        same = min(lengths) == width - 1
        columns = width - 1 if same else torch.tensor(lengths)
        mask = None
        if not same:  # additive, made once per step: a boolean mask would be converted in every layer
            hidden = (torch.arange(width)[None, :] > columns[:, None])[:, None, None, :]
            mask = torch.zeros(hidden.shape, dtype=self.dtype).masked_fill_(hidden, float("-inf"))
        rows = slice(0, len(ids))

        def attend(i, q, k, v):
            cache.write_step(i, k, v, columns)
            keys, values = cache.view(i, rows, width)
            return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask,
                                                  enable_gqa=self.dims.kv_heads != self.dims.heads)

        positions = torch.tensor(lengths)[:, None]
        logits = self._forward(F.embedding(torch.tensor(ids)[:, None], self.embed), positions, attend,
                               _groups(adapters))
        cache.advance(None, 1)
        return logits

    def _forward(self, x: torch.Tensor, positions: torch.Tensor, attend, groups: dict, logits: bool = True,
                 invariant: bool = False, last: torch.Tensor | None = None) -> torch.Tensor | None:
        """x [rows, T, hidden] through every layer; logits [rows, vocab] at each row's last position, or at the
        positions `last` (indices over rows × T; None without `logits`: a pass that only fills the KV cache).
        `invariant`: each position computes what it would alone (see Matrix)."""
        def project(i, key, h):
            layer = self.layers[i]
            return _project(layer.matrices[key], h, layer.adapters, key, groups, invariant)

        x = run_layers(x, self.norms, self.dims, *rotary_tables(self.rotary, x, positions), project, attend)
        if not logits:
            return None
        final = x[:, -1] if last is None else x.reshape(-1, self.dims.hidden)[last]
        return self.head(rms_norm(final, self.norm), torch.float32)


def _project(matrix: Matrix, x: torch.Tensor, adapters: dict, key: str, groups: dict,
             invariant: bool = False) -> torch.Tensor:
    """`matrix(x)` plus each group's LoRA update (groups: adapter name → indices of the positions of x, flattened
    over its batch and sequence, or None for all of them). Not the training forward's projection: rows may use
    different adapters, and nothing here needs autograd, so updates are added in place."""
    y = matrix(x, invariant=invariant)
    inputs, outputs = x.reshape(-1, x.shape[-1]), y.view(-1, y.shape[-1])
    for name, positions in groups.items():
        lora = adapters[name].get(key)
        if lora is None:
            continue
        if positions is None:  # every position: y += x·A·B (rounded to y's dtype first, as for a group)
            outputs.add_(torch.mm(torch.mm(inputs.float(), lora.down), lora.up).to(y.dtype))
        else:
            update = torch.mm(torch.mm(inputs.index_select(0, positions).float(), lora.down), lora.up)
            outputs.index_add_(0, positions, update.to(y.dtype))
    return y


def _groups(adapters: list[str | None]) -> dict:
    """Positions by adapter (`adapters`: one per position), the base model's left out; None instead of indices
    when one adapter has every position."""
    names = set(adapters)
    if len(names) == 1:
        name = names.pop()
        return {name: None} if name else {}
    return {name: torch.tensor([i for i, a in enumerate(adapters) if a == name]) for name in names if name}


class LlamaBatch:
    """The rows decoded together by a `LlamaDecoder`: row i of the KV cache is `rows[i]`."""

    max_rows = None  # no limit of its own: the engine's max_batch applies
    together = True  # several prompts can join in one pass (`start`)

    def __init__(self, decoder: LlamaDecoder, context: int):
        self.decoder = decoder
        self.cache = decoder.new_cache(context)
        self.rows: list = []

    def prompt_cost(self, generation) -> int:
        """The prompt's tokens that joining would compute: those the prompt cache does not hold."""
        cache = self.decoder.prompt_cache
        return len(generation.prompt) - (cache.cached_tokens(generation.prompt, generation.adapter) if cache else 0)

    def start(self, generations: list) -> torch.Tensor:
        """Process the `generations`' prompts into new last rows, in one pass where they can share it; the logits
        [len(generations), vocab] after each prompt."""
        first = len(self.rows)
        rows = [self.cache.add_row() for _ in generations]
        self.rows.extend(generations)
        try:
            return self.decoder.prefill_rows(self.cache, [(row, g.prompt, g.adapter)
                                                          for row, g in zip(rows, generations)])
        except Exception:
            self.keep(self.rows[:first])
            raise

    def step(self) -> torch.Tensor:
        return self.decoder.step(self.cache, [g.tokens[-1] for g in self.rows], [g.adapter for g in self.rows])

    def keep(self, generations: list) -> None:
        """Keep only `generations` (a subset of the rows): each leaving row's place goes to the last row."""
        staying = set(map(id, generations))
        for i in reversed(range(len(self.rows))):
            if id(self.rows[i]) not in staying:
                self.cache.remove_row(i)
                self.rows[i] = self.rows[-1]
                self.rows.pop()
