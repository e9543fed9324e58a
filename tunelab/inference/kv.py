"""Keys and values of the answers being decoded together, in buffers allocated once and grown by doubling.

Each layer has one key and one value buffer of shape [rows, kv_heads, width, head_dim]. Row i holds answer i's
keys and values from column 0 up to its length; columns past a row's length are stale and masked out by the
attention. Rows stay packed at the front: when an answer leaves, the last row moves into its place, so a decode
step attends over one block of rows without gathering them. Growing (more rows, or a longer answer than the
buffers hold) copies the buffers once into twice their size, so a step never copies the cache (a growing
cache that concatenates every token copies all of it at every step).
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(self, layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype, *, limit: int,
                 rows: int = 2, width: int = 256):
        self.shape = (kv_heads, head_dim)
        self.layers, self.dtype, self.limit = layers, dtype, limit  # limit: the model's context length
        self.lengths: list[int] = []  # real tokens in each row
        self._row_ids = torch.arange(0)
        self.keys = [self._empty(rows, min(width, limit)) for _ in range(layers)]
        self.values = [self._empty(rows, min(width, limit)) for _ in range(layers)]

    @property
    def rows(self) -> int:
        return len(self.lengths)

    def add_row(self) -> int:
        """A new empty row at the end; returns its index."""
        if self.rows == self.keys[0].shape[0]:
            self._grow(rows=2 * self.rows)
        self.lengths.append(0)
        return self.rows - 1

    def remove_row(self, row: int) -> None:
        """Drop `row`; the last row moves into its place (callers renumber theirs the same way)."""
        last = self.rows - 1
        if row != last:
            width = self.lengths[last]
            for buffers in (self.keys, self.values):
                for layer in buffers:
                    layer[row, :, :width] = layer[last, :, :width]
            self.lengths[row] = self.lengths[last]
        self.lengths.pop()

    def reserve(self, width: int) -> None:
        """Make room for rows of up to `width` tokens."""
        if width > self.limit:
            raise ValueError(f"{width} tokens do not fit the model's {self.limit}-token context")
        if width > self.keys[0].shape[2]:
            self._grow(width=min(self.limit, max(width, 2 * self.keys[0].shape[2])))

    def write_prompt(self, layer: int, row: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """keys/values [1, kv_heads, T, head_dim] of `row`'s next T tokens (the length moves on in `advance`)."""
        start = self.lengths[row]
        end = start + keys.shape[2]
        self.keys[layer][row, :, start:end] = keys[0]
        self.values[layer][row, :, start:end] = values[0]

    def write_step(self, layer: int, keys: torch.Tensor, values: torch.Tensor, columns: torch.Tensor | int) -> None:
        """keys/values [rows, kv_heads, 1, head_dim]: one new token per row, at column `columns` (each row's
        length: one int when all rows are as long, else a tensor)."""
        n = self.rows
        if isinstance(columns, int):
            self.keys[layer][:n, :, columns] = keys[:, :, 0]
            self.values[layer][:n, :, columns] = values[:, :, 0]
        else:
            if len(self._row_ids) != n:  # the same for every layer of a step: made once
                self._row_ids = torch.arange(n)
            rows = self._row_ids
            self.keys[layer][rows, :, columns] = keys[:, :, 0]
            self.values[layer][rows, :, columns] = values[:, :, 0]

    def view(self, layer: int, rows: slice, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.keys[layer][rows, :, :width], self.values[layer][rows, :, :width]

    def advance(self, row: int | None, tokens: int) -> None:
        """`tokens` more tokens in `row` (None: in every row)."""
        if row is None:
            self.lengths = [length + tokens for length in self.lengths]
        else:
            self.lengths[row] += tokens

    def _empty(self, rows: int, width: int) -> torch.Tensor:
        return torch.zeros(rows, self.shape[0], width, self.shape[1], dtype=self.dtype)

    def _grow(self, *, rows: int | None = None, width: int | None = None) -> None:
        old_rows, _, old_width, _ = self.keys[0].shape
        rows, width = rows or old_rows, width or old_width
        for buffers in (self.keys, self.values):
            for i, layer in enumerate(buffers):
                grown = self._empty(rows, width)
                grown[:old_rows, :, :old_width] = layer
                buffers[i] = grown
