"""Keys and values of recent prompts, kept so that a prompt starting the same way skips that part of its prefill.

Chat requests repeat themselves at the front: every request of an app carries the same system message, and each
turn of a conversation resends the turns before it. After a prompt is processed, the cache keeps its keys and
values in blocks of `BLOCK` tokens at fixed positions (0–15, 16–31, …), each keyed by the adapter and every token
up to the block's end (a block's keys depend on nothing else). A later prompt that starts with the same blocks
copies them and processes only the rest: a chat's next turn processes the last answer and the new message, not
the whole conversation.

A prompt is processed as its full blocks in one pass, then the rest (1 to BLOCK tokens) in a second one, cache
or no cache (the rests of prompts that arrive together share that pass, each row computing what it would
alone), so a prompt whose blocks were all cached computes exactly what it computed the first time: the same
request gets the same logits to the bit, and a seeded answer repeats. A prompt that shares only some
blocks with an earlier one gets the same logits up to rounding (bf16 products round a little differently in
another grouping of rows, as they do for an answer decoded next to others).

Blocks are evicted least recently used first, beyond `capacity_bytes`. Only prompts are cached: an answer's keys and
values are computed once more as part of the next turn's prompt, and cached from there.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

BLOCK = 16  # tokens per cached block: what a hit reuses is rounded down to a multiple of this, so the rest of
# a prompt that repeats an earlier one up to its last message is short (a batch the decode kernels take)


class PromptCache:
    def __init__(self, capacity_bytes: int):
        self.capacity_bytes = capacity_bytes
        self.bytes = 0
        self.hits = self.stored = 0  # blocks taken from the cache, blocks computed and kept
        # (adapter, tokens up to the block's end) -> per layer (keys, values), each [kv_heads, BLOCK, head_dim]
        self._blocks: OrderedDict[tuple, list[tuple[torch.Tensor, torch.Tensor]]] = OrderedDict()

    def cached_blocks(self, ids: list[int], adapter: str | None) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
        """The cached blocks that start `ids`, in order, up to the first one missing. The last token of `ids` is
        never covered: its logits are what the prefill is for."""
        keys = self._leading_keys(ids, adapter)
        for key in keys:
            self._blocks.move_to_end(key)
        self.hits += len(keys)
        return [self._blocks[key] for key in keys]

    def cached_tokens(self, ids: list[int], adapter: str | None) -> int:
        """How many tokens of `ids` `cached_blocks` would cover, without counting a use."""
        return len(self._leading_keys(ids, adapter)) * BLOCK

    def _leading_keys(self, ids: list[int], adapter: str | None) -> list[tuple]:
        keys = []
        for end in range(BLOCK, len(ids), BLOCK):
            key = (adapter, tuple(ids[:end]))
            if key not in self._blocks:
                break
            keys.append(key)
        return keys

    def add(self, ids: list[int], adapter: str | None, block: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Keep the block that ends `ids` (len(ids) a multiple of BLOCK)."""
        key = (adapter, tuple(ids))
        if key in self._blocks or self.capacity_bytes <= 0:
            return
        self.stored += 1
        self._blocks[key] = block
        self.bytes += _size(block)
        while self.bytes > self.capacity_bytes and self._blocks:
            _, evicted = self._blocks.popitem(last=False)
            self.bytes -= _size(evicted)

    def forget(self, adapter: str) -> None:
        """Drop an adapter's blocks (it was unloaded; a later one of the same name may differ)."""
        for key in [k for k in self._blocks if k[0] == adapter]:
            self.bytes -= _size(self._blocks.pop(key))


def _size(block: list[tuple[torch.Tensor, torch.Tensor]]) -> int:
    return sum(k.nbytes + v.nbytes for k, v in block)
