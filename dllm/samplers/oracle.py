"""The EGP oracle: commit every candidate whose proposal already equals the output it must reach.

Learn2PD's Extremely Greedy Parallel oracle (spec LF §1.2) and the upper bound of every accuracy-vs-speed
plot: given the reference output of each row (usually the static one-token-per-step decode), a position is
committed as soon as the model's proposal there equals the reference token. If no proposal matches, the
oracle commits the most confident candidate with the *reference* token (the spec's stuck rule), so it always
reaches the reference exactly, in the fewest forwards any confidence-free rule could.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..engine.view import Decision, StepView, top_k_mask
from .base import Sampler, register


@register("oracle")
@dataclass
class Oracle(Sampler):
    """``targets``: one list of generated token ids per prompt (the output to reach, EOS padding included or
    not: positions past a target's end are treated as EOS)."""

    targets: list = field(default_factory=list)

    def validate(self) -> None:
        # targets may be filled in later (the lm-eval model decodes the static reference per batch first)
        if not isinstance(self.targets, (list, tuple)):
            raise ValueError("oracle: pass targets=[ids of prompt 0's output, ...] (one list of token ids per prompt)")
        if not all(isinstance(t, (list, tuple)) and all(isinstance(i, int) for i in t) for t in self.targets):
            raise ValueError("oracle: every target must be a list of token ids")

    def _target_window(self, view: StepView) -> torch.Tensor:
        """[B, W] the reference token at every span column of every active row."""
        if "oracle" not in view.state:
            if len(self.targets) < int(view.rows.max()) + 1:
                raise ValueError(f"oracle: {len(self.targets)} targets for {int(view.rows.max()) + 1} prompts: pass "
                                 "targets=[...] with one list of token ids per prompt")
            fill = int(view.eos_ids[0]) if view.eos_ids is not None and view.eos_ids.numel() else view.mask_id
            width = max(view.gen_length, max(len(t) for t in self.targets))
            table = torch.full((len(view.rows), width), fill, dtype=torch.long)
            for b, row in enumerate(view.rows.tolist()):
                target = list(self.targets[row])[:width]
                table[b, :len(target)] = torch.tensor(target, dtype=torch.long)
            view.state["oracle"] = table.to(view.x0.device)
        table = view.state["oracle"]
        index = view.columns()[None, :] - view.gen_start[:, None]
        return table.gather(1, index.clamp(0, table.shape[1] - 1))

    def select(self, view: StepView) -> Decision:
        target = self._target_window(view)
        right = view.masked & (view.x0 == target)
        stuck = view.masked.any(-1) & ~right.any(-1)
        forced = top_k_mask(view.confidence, stuck.long())
        known = target != view.mask_id  # a reference that stopped early (a stop string) left MASK behind
        return Decision(right | forced, torch.where(forced & known, target, view.x0))
