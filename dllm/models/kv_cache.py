"""Preallocated per-layer K/V buffers with three write modes.

The buffers are laid out by *slot*: slot i holds the key/value of canvas column i (post-RoPE, so a key keeps
its absolute position wherever it is read from). ``length`` counts the committed slots ``[0, length)``.
Every forward writes its new K/V at ``[start, start + q)`` and attends over ``[0, key_len)``:

* ``append``    — start = length, key_len = length + q; afterwards length += commit (default q).
                  Prefill, Fast-dLLM v2 / SDAR block commit; with ``commit < q`` the tail is scratch.
* ``read``      — start = length, key_len = length + q; length unchanged. The new K/V land in scratch
                  slots past ``length`` that nothing treats as committed (a read-only denoising step).
* ``at_slots``  — start given, key_len given (default: the furthest slot written so far); length unchanged.
                  Fast-dLLM v1 dual cache (write the block span of a full-length cache) and the Fast-dLLM
                  v2 sub-block cache (write a sub-block inside the current block's scratch slots).
                  ``keep`` (bool [B, q]) keeps the stored K/V instead of the new ones where True, so rows of
                  one forward can refresh different columns (the sub-block cache refreshes only the rows
                  that need it).

The cache policies in :mod:`dllm.caches` choose the mode; the network only follows a :class:`KVWrite`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class KVWrite:
    """Where one forward stores its K/V (``start``), what it reads (``key_len``) and the new ``length``."""

    start: int
    key_len: int
    new_length: int
    keep: torch.Tensor | None = None  # [B, q] bool: keep the stored K/V at these (row, column) slots


class KVCache:
    def __init__(self, num_layers: int, batch: int, num_kv_heads: int, capacity: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str):
        shape = (batch, num_kv_heads, capacity, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.capacity = capacity
        self.length = 0
        self.filled = 0  # one past the furthest slot ever written (committed or scratch)

    @classmethod
    def for_network(cls, network, batch: int, capacity: int) -> "KVCache":
        cfg = network.cfg
        weight = network.embed.weight
        return cls(cfg.num_layers, batch, cfg.num_kv_heads, capacity, cfg.head_dim, weight.dtype, weight.device)

    # -- the three write modes -------------------------------------------------------------------------
    def append(self, q_len: int, commit: int | None = None) -> KVWrite:
        commit = q_len if commit is None else commit
        self._check(self.length, q_len)
        return KVWrite(self.length, self.length + q_len, self.length + commit)

    def rewrite(self, q_len: int) -> KVWrite:
        """Write slots [0, q) afresh and commit them (a refresh: nothing stored before is kept)."""
        self._check(0, q_len)
        return KVWrite(0, q_len, q_len)

    def read(self, q_len: int) -> KVWrite:
        self._check(self.length, q_len)
        return KVWrite(self.length, self.length + q_len, self.length)

    def at_slots(self, start: int, q_len: int, key_len: int | None = None, keep: torch.Tensor | None = None) -> KVWrite:
        self._check(start, q_len)
        key_len = max(self.filled, start + q_len) if key_len is None else key_len
        return KVWrite(start, key_len, self.length, keep)

    # -- used by the network -------------------------------------------------------------------------
    def store(self, layer: int, k: torch.Tensor, v: torch.Tensor, write: KVWrite):
        """Write this layer's new K/V [B, H, q, d] and return the keys/values to attend over."""
        end = write.start + k.shape[2]
        if write.keep is not None:
            keep = write.keep[:, None, :, None]
            k = torch.where(keep, self.k[layer][:, :, write.start:end], k)
            v = torch.where(keep, self.v[layer][:, :, write.start:end], v)
        self.k[layer][:, :, write.start:end] = k
        self.v[layer][:, :, write.start:end] = v
        return self.k[layer][:, :, : write.key_len], self.v[layer][:, :, : write.key_len]

    def commit(self, write: KVWrite) -> None:
        self.filled = write.key_len if write.start == 0 else max(self.filled, write.key_len)
        self.length = write.new_length

    def expanded(self, repeat: int) -> "KVCache":
        """A copy with every row repeated ``repeat`` times (read-only hypothesis forwards write into it)."""
        copy = KVCache.__new__(KVCache)
        copy.k = [t.repeat_interleave(repeat, 0) for t in self.k]
        copy.v = [t.repeat_interleave(repeat, 0) for t in self.v]
        copy.capacity, copy.length, copy.filled = self.capacity, self.length, self.filled
        return copy

    # -- bookkeeping ----------------------------------------------------------------------------------
    def crop(self, length: int) -> None:
        """Forget committed slots from ``length`` on (Fast-dLLM v1 prefix cache keeps only the prefix)."""
        self.length = min(self.length, length)
        self.filled = self.length

    def reset(self) -> None:
        self.length = 0
        self.filled = 0

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep only batch rows ``rows`` (finished rows leave the batch)."""
        self.k = [t[rows] for t in self.k]
        self.v = [t[rows] for t in self.v]

    def _check(self, start: int, q_len: int) -> None:
        if start + q_len > self.capacity:
            raise ValueError(f"KV cache overflow: slots {start}..{start + q_len} exceed capacity {self.capacity}")
