"""The rows decoded together through transformers' own forward pass: the generic path, for any architecture
(the Llama decoder in decoder.py is the fast path for Llama models).

All rows share one transformers KV cache. Rows have different lengths, so every row is left-padded to the
longest; the mask hides the padding and each row gets its own position ids (its count of real tokens), so a row
computes exactly what it would compute alone.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.nn import functional as F
from transformers.cache_utils import DynamicLayer


class Batch:
    together = False  # one prompt at a time: `start` takes a list of one

    def __init__(self, forward: Callable):
        self.forward = forward  # (ids, cache, mask, positions, adapters) -> model output: Engine.forward
        self.rows: list = []  # Generations, in row order
        self.cache = None  # a DynamicCache: per layer keys/values of shape [rows, heads, width, head_dim]
        self.mask: torch.Tensor | None = None  # [rows, width]: 1 for a real token, 0 for padding
        self.max_rows: int | None = None  # 1 once a model's cache turns out not to be stackable

    def prompt_cost(self, generation) -> int:
        return len(generation.prompt)

    @torch.no_grad()
    def start(self, generations: list) -> torch.Tensor:
        """Process the one generation's prompt on its own and add it as the last row; the logits [1, vocab] after
        the prompt."""
        (generation,) = generations
        out = self.forward(torch.tensor([generation.prompt]), None, None, None, [generation.adapter])
        if not self.joinable(out.cache):
            self.max_rows = 1  # a cache kind rows cannot share (sliding windows): one answer at a time
        self._join(generation, out.cache)
        return out.logits[:, -1].float()

    @torch.no_grad()
    def step(self) -> torch.Tensor:
        """One token for every row, in one forward pass: the logits [rows, vocab]."""
        ids = torch.tensor([[g.tokens[-1]] for g in self.rows])
        mask, positions = self._extend()
        out = self.forward(ids, self.cache, mask, positions, [g.adapter for g in self.rows])
        self.cache = out.cache
        return out.logits[:, -1].float()

    @staticmethod
    def joinable(cache) -> bool:
        """Rows can only be stacked when every layer's cache is a plain growing one (no sliding window)."""
        return all(type(layer) is DynamicLayer for layer in cache.layers)

    def _join(self, generation, cache) -> None:
        length = cache.get_seq_length()
        mask = torch.ones(1, length, dtype=torch.long)
        if not self.rows:
            self.rows, self.cache, self.mask = [generation], cache, mask
            return
        width = max(length, self.mask.shape[1])
        for mine, theirs in zip(self.cache.layers, cache.layers):
            mine.keys = torch.cat([_pad_kv(mine.keys, width), _pad_kv(theirs.keys, width)])
            mine.values = torch.cat([_pad_kv(mine.values, width), _pad_kv(theirs.values, width)])
        self.mask = torch.cat([_pad_mask(self.mask, width), _pad_mask(mask, width)])
        self.rows.append(generation)

    def _extend(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The mask and position ids for the next token of every row; (None, None) when no row is padded, so
        the model takes its plain causal path (what a single answer always gets)."""
        self.mask = torch.cat([self.mask, torch.ones(len(self.rows), 1, dtype=torch.long)], dim=1)
        if bool(self.mask[:, 0].all()):  # padding is always on the left: column 0 says whether there is any
            return None, None
        return self.mask, self.mask.sum(dim=1, keepdim=True) - 1

    def keep(self, generations: list) -> None:
        """Keep only `generations` (a subset of the rows, in order); trim padding no remaining row needs."""
        if len(generations) == len(self.rows):
            return
        if not generations:
            self.rows, self.cache, self.mask = [], None, None
            return
        index = torch.tensor([self.rows.index(g) for g in generations])
        self.mask = self.mask[index]
        trim = int((self.mask.sum(dim=0) == 0).long().cumprod(dim=0).sum())  # leading all-padding columns
        self.mask = self.mask[:, trim:]
        for layer in self.cache.layers:
            layer.keys = layer.keys[index, :, trim:]
            layer.values = layer.values[index, :, trim:]
        self.rows = list(generations)


def _pad_kv(states: torch.Tensor, width: int) -> torch.Tensor:
    return F.pad(states, (0, 0, width - states.shape[-2], 0))


def _pad_mask(mask: torch.Tensor, width: int) -> torch.Tensor:
    return F.pad(mask, (width - mask.shape[1], 0))
