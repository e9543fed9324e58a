"""A lean forward pass for Llama-architecture models (SmolLM2 is one), used for their prompts and decode steps.

transformers' forward serves every model and every feature: one decode step of SmolLM2-135M runs thousands
of small tensor operations through it, and on a 2-core CPU their overhead costs as much as reading the
weights. This pass does only what a Llama layer does, with fewer, larger operations: q, k and v come from one
fused matrix and gate and up from another (`weights.Matrix`, int4/int8/fp32), rotary embeddings are applied to
q and k together, keys and values go into preallocated buffers (`kv.KVCache`), and a decode step's attention is
one `scaled_dot_product_attention` call per layer over all rows. Prompts are processed several at once
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

from ..models.llama_block import PROJECTIONS, base_linear
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
        self.matrices = {}
        for key, (parent, names) in PROJECTIONS.items():
            modules = [getattr(getattr(layer, parent), name) for name in names]
            weight = torch.cat([base_linear(m).weight for m in modules])
            biases = [base_linear(m).bias for m in modules]
            bias = torch.cat(biases) if all(b is not None for b in biases) else None
            self.matrices[key] = Matrix(weight, bias, fmt)
        self.dtype = self.matrices["qkv"].dtype
        self.norms = [n.weight.detach().to(self.dtype) for n in (layer.input_layernorm,
                                                               layer.post_attention_layernorm)]
        self.eps = layer.input_layernorm.variance_epsilon
        self.adapters: dict[str, dict[str, LoRA]] = {}


class LlamaDecoder:
    def __init__(self, model, fmt: str, prompt_cache_bytes: int = 0):
        config = model.config
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.hidden = config.hidden_size
        inner = model.get_base_model().model if hasattr(model, "get_base_model") else model.model
        self.layers = [Layer(layer, fmt) for layer in inner.layers]
        self.dtype = self.layers[0].dtype
        self.fmt = self.layers[0].matrices["qkv"].fmt
        self.embed = inner.embed_tokens.weight.detach().to(self.dtype)
        self.norm, self.eps = inner.norm.weight.detach().to(self.dtype), inner.norm.variance_epsilon
        head = model.get_output_embeddings()
        self.head = Matrix(base_linear(head).weight, base_linear(head).bias, "int8" if fmt == "int4" else fmt)
        self.rotary = inner.rotary_emb
        half = self.head_dim // 2
        self.rotation_sign = torch.cat([-torch.ones(half), torch.ones(half)]).to(self.dtype)
        self.prompt_cache = PromptCache(prompt_cache_bytes) if prompt_cache_bytes > 0 else None

    def new_cache(self, limit: int, **sizes) -> KVCache:
        return KVCache(len(self.layers), self.kv_heads, self.head_dim, self.dtype, limit=limit, **sizes)

    @property
    def weight_bytes(self) -> int:
        """What one decode step reads from the weights."""
        return sum(m.nbytes for layer in self.layers for m in layer.matrices.values()) + self.head.nbytes

    # --- adapters ---

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
            for key, (parent, names) in PROJECTIONS.items():
                modules = [getattr(getattr(theirs, parent), n) for n in names]
                lora = _fused_lora(modules, name)
                if lora is not None:
                    updates[key] = lora
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
                                                          enable_gqa=self.kv_heads != self.heads))
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
                                                  enable_gqa=self.kv_heads != self.heads)

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
        n, length = x.shape[:2]
        heads, kv, dim = self.heads, self.kv_heads, self.head_dim
        cos, sin = self.rotary(x, positions)
        cos, sin = cos[:, :, None], (sin * self.rotation_sign)[:, :, None]  # broadcast over the heads
        for i, layer in enumerate(self.layers):
            m = layer.matrices
            h = F.rms_norm(x, (self.hidden,), layer.norms[0], layer.eps)
            qkv = _project(m["qkv"], h, layer.adapters, "qkv", groups, invariant)
            qk = qkv[..., :(heads + kv) * dim].view(n, length, heads + kv, dim)
            qk = torch.addcmul(qk * cos, qk.roll(dim // 2, -1), sin)  # rotary: x·cos + rotate_half(x)·sin
            q, k = qk[:, :, :heads].transpose(1, 2), qk[:, :, heads:].transpose(1, 2)
            v = qkv[..., (heads + kv) * dim:].view(n, length, kv, dim).transpose(1, 2)
            attention = attend(i, q, k, v).transpose(1, 2).reshape(n, length, heads * dim)
            x = x + _project(m["o"], attention, layer.adapters, "o", groups, invariant)
            h = F.rms_norm(x, (self.hidden,), layer.norms[1], layer.eps)
            gate, up = _project(m["gate_up"], h, layer.adapters, "gate_up", groups, invariant).chunk(2, dim=-1)
            x = x + _project(m["down"], F.silu(gate) * up, layer.adapters, "down", groups, invariant)
        if not logits:
            return None
        final = x[:, -1] if last is None else x.reshape(-1, self.hidden)[last]
        return self.head(F.rms_norm(final, (self.hidden,), self.norm, self.eps), torch.float32)


def _project(matrix: Matrix, x: torch.Tensor, adapters: dict, key: str, groups: dict,
             invariant: bool = False) -> torch.Tensor:
    """`matrix(x)` plus each group's LoRA update (groups: adapter name → indices of the positions of x, flattened
    over its batch and sequence, or None for all of them)."""
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


def _fused_lora(modules, name: str) -> LoRA | None:
    """One adapter's LoRA update of a fused matrix (the `modules`' outputs side by side), or None if the adapter
    does not touch any of them."""
    downs, ups, widths = [], [], []
    for module in modules:
        widths.append(base_linear(module).weight.shape[0])
        if name in getattr(module, "lora_A", {}):
            downs.append(module.lora_A[name].weight.detach().float())
            ups.append(module.lora_B[name].weight.detach().float() * module.scaling[name])
        else:
            downs.append(None)
            ups.append(None)
    if all(d is None for d in downs):
        return None
    rank = sum(d.shape[0] for d in downs if d is not None)
    down = torch.cat([d for d in downs if d is not None]).t().contiguous()
    up = torch.zeros(rank, sum(widths))
    r = column = 0
    for d, u, width in zip(downs, ups, widths):
        if d is not None:
            up[r:r + d.shape[0], column:column + width] = u.t()
            r += d.shape[0]
        column += width
    return LoRA(down, up)


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
