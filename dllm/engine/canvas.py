"""The canvas: a ragged batch of prompts laid out so every row decodes exactly as it would alone.

Rows are left-padded (pad id, keys hidden) and each row's logical positions start at 0 on its first prompt
token, so RoPE sees the same positions alone and in a batch.

* Full-attention families: rows are padded to the longest prompt, so the generated region and its
  semi-autoregressive blocks start at the same column for every row (blocks aligned to the prompt end).
* Block-causal families: attention blocks are absolute multiples of ``block_size`` of the *logical*
  position. Each row is left-padded by a multiple of ``block_size`` chosen so that the blocks holding the
  rows' prompt ends coincide; rows then start generating at different offsets inside that block and end at
  different columns (the columns past a row's end are right padding: keys hidden, never candidates).

In both cases a canvas column has the same block boundaries in every row, so one list of decode spans
serves the whole batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Canvas:
    x: torch.Tensor  # [B, T] token ids (prompt, MASK for undecided positions, pad)
    keep: torch.Tensor  # [B, T] bool: False on padding columns (left and right)
    positions: torch.Tensor  # [B, T] logical positions (0 at each row's first prompt token)
    pad: torch.Tensor  # [B] left padding per row
    gen_start: torch.Tensor  # [B] first generated column per row
    gen_end: torch.Tensor  # [B] one past the last generated column per row
    spans: list[tuple[int, int]]  # decode blocks [start, end) in canvas columns, left to right
    block_size: int | None  # attention block of block-causal families (None for full attention)
    has_padding: bool

    @property
    def width(self) -> int:
        return self.x.shape[1]

    def generated_region(self) -> torch.Tensor:
        """Bool [B, T]: True on each row's generated columns."""
        cols = torch.arange(self.width, device=self.x.device)
        return (cols >= self.gen_start[:, None]) & (cols < self.gen_end[:, None])

    def select_rows(self, rows: torch.Tensor) -> None:
        for name in ("x", "keep", "positions", "pad", "gen_start", "gen_end"):
            setattr(self, name, getattr(self, name)[rows])


def build_canvas(prompts: list[list[int]], gen_length: int, block_length: int, *, mask_id: int, pad_id: int,
                 block_size: int | None, device, span_lengths: list[int] | None = None,
                 fixed: list[int] | list[list[int]] | None = None) -> Canvas:
    """Lay out ``prompts`` (token-id lists) with ``gen_length`` MASK positions each (see module docstring).

    ``span_lengths``: decode spans of a sampler's own layout (full-attention families only), left to right,
    summing to ``gen_length``; default blocks of ``block_length``.
    ``fixed``: the generated region's initial contents (templates / scaffolds, multi-region infilling): a
    list of ``gen_length`` token ids, ``mask_id`` where the model fills in, shared by every row — or one such
    list per row. Fixed cells are never candidates; spans without MASK are skipped."""
    lengths = torch.tensor([len(p) for p in prompts])
    batch = len(prompts)
    if block_size is None:
        pad = lengths.max() - lengths
        gen_start = torch.full((batch,), int(lengths.max()))
    else:
        first_block = lengths // block_size
        pad = (first_block.max() - first_block) * block_size
        gen_start = pad + lengths
    gen_end = gen_start + gen_length
    width = int(gen_end.max())
    x = torch.full((batch, width), pad_id, dtype=torch.long)
    cols = torch.arange(width)
    for row, prompt in enumerate(prompts):
        start = int(pad[row])
        x[row, start:start + len(prompt)] = torch.tensor(prompt, dtype=torch.long)
    generated = (cols >= gen_start[:, None]) & (cols < gen_end[:, None])
    x[generated] = mask_id
    if fixed is not None:
        rows = [fixed] * batch if not fixed or isinstance(fixed[0], int) else list(fixed)
        if len(rows) != batch or any(len(r) != gen_length for r in rows):
            raise ValueError(f"fixed must be {gen_length} token ids (gen_length), or one such list per prompt")
        for row, cells in enumerate(rows):
            start = int(gen_start[row])
            x[row, start:start + gen_length] = torch.tensor(cells, dtype=torch.long)
    keep = (cols >= pad[:, None]) & (cols < gen_end[:, None])
    positions = (cols[None, :] - pad[:, None]).clamp(min=0)

    if block_size is None and span_lengths is not None:
        if sum(span_lengths) != gen_length or min(span_lengths) < 1:
            raise ValueError(f"span lengths {span_lengths} must be positive and sum to gen_length {gen_length}")
        edges = [int(gen_start[0])]
        for length in span_lengths:
            edges.append(edges[-1] + length)
        spans = list(zip(edges[:-1], edges[1:]))
    elif block_size is None:
        first = int(gen_start[0])
        spans = [(s, min(s + block_length, width)) for s in range(first, width, block_length)]
    else:
        first = int(gen_start.min()) // block_length * block_length
        spans = [(s, min(s + block_length, width)) for s in range(first, width, block_length)]
    return Canvas(
        x=x.to(device), keep=keep.to(device), positions=positions.to(device), pad=pad.to(device),
        gen_start=gen_start.to(device), gen_end=gen_end.to(device), spans=spans, block_size=block_size,
        has_padding=not bool(keep.all()),
    )
