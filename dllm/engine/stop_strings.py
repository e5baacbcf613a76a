"""Stop strings checked inside the loop, incrementally: only newly settled tokens are decoded each step."""

from __future__ import annotations

import torch


class StopWatcher:
    """Finds stop strings in each row's settled prefix (tokens before the first MASK or EOS).

    A row is checked only when its prefix grew, and only the new tokens plus a margin before them are copied
    to the host and decoded: a stop string of ``n`` characters spans at most ``4 n`` byte-level tokens, so a
    window that starts ``4 n`` tokens before the previously checked end sees every occurrence that involves a
    new token. Total decoding work is linear in the output length (decoding the whole prefix each step was
    quadratic and copied the full canvas to the host).
    """

    def __init__(self, tokenizer, stops: tuple[str, ...], batch: int):
        self.tokenizer, self.stops = tokenizer, stops
        self.margin = 4 * max(len(s) for s in stops) + 4
        self.checked = torch.zeros(batch, dtype=torch.long)  # per caller row: prefix length already checked

    def seen(self, x: torch.Tensor, rows: torch.Tensor, gen_start: torch.Tensor, prefix_end: torch.Tensor) -> torch.Tensor:
        """[B active] bool: the row's settled prefix now contains a stop string."""
        found = torch.zeros(rows.shape[0], dtype=torch.bool)
        starts = gen_start.cpu()
        checked = self.checked[rows]
        grown = (prefix_end - starts > checked).nonzero().flatten()
        if grown.numel() == 0:
            return found
        lo_rows = (starts[grown] + (checked[grown] - self.margin).clamp(min=0))
        hi_rows = prefix_end[grown]
        lo, hi = int(lo_rows.min()), int(hi_rows.max())
        window = x[grown.to(x.device), lo:hi].cpu()  # one small host copy for every grown row
        for i, r in enumerate(grown.tolist()):
            a, b = int(lo_rows[i]) - lo, int(hi_rows[i]) - lo
            text = self.tokenizer.decode(window[i, a:b].tolist(), skip_special_tokens=False)
            found[r] = any(stop in text for stop in self.stops)
        self.checked[rows[grown]] = prefix_end[grown] - starts[grown]
        return found
