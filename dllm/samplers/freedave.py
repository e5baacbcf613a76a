"""FreeDave (Wu & Zhang, arXiv 2510.00294): free draft-and-verify, lossless w.r.t. static decoding.

Spec ``learn2pd_localleap_freedave.md`` §3. From the logits of the current state the sampler builds the nested
drafts ``draft_k`` = the next k static one-token-per-step commits as this forward predicts them (k = 1..D'),
verifies all of them with ONE read-only batched forward through the same cache (``view.forward``, 1 NFE, the
forward the next step would run), accepts the longest chain that static decoding would itself have produced,
commits it and hands the accepted draft's logits to the next step (``Decision.next_logits``), which therefore
costs no forward of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..engine.proposals import propose_greedy
from ..engine.view import Decision, StepView, rank_order, top_k_mask
from .base import Sampler, register

LAYOUTS = ("batch_expanding",)


@register("freedave")
@dataclass
class FreeDave(Sampler):
    """Lossless draft-and-verify: the tokens equal ``sampler="static"`` one token per step with the same cache.

    Step (spec §3.3-3.4): rank this row's candidates by (confidence desc, position asc) — the static rule;
    argmax over the vocabulary takes the lowest id. ``draft_k`` fills the first k ranked positions with their
    proposals, k = 1..D' with D' = min(``draft_steps``, candidates). One batched hypothesis forward scores every
    draft; ``target_k`` = the static step from ``draft_k`` with its fresh logits. Exact-match rule: accept
    ``draft_{j+1}`` while it equals ``target_j`` (the fresh top-1 is the next stale-ranked position with the
    same token); by induction every accepted draft is a state of the static trajectory. The accepted draft's
    logits are handed over, so every forward commits between 1 and D' tokens; ``draft_steps=1`` is static
    decoding with the same NFE. A row with one candidate left commits it from the logits it already has (no
    forward), as static decoding does.

    Layout ``draft_mode="batch_expanding"`` (the default and only one): the D' drafts are extra batch rows of
    one forward over the cache's plan for the next step (K/V copied per hypothesis, never written back). It is
    the default because each hypothesis then runs exactly the computation the next static step runs — same
    columns, same attention mask, same K/V — which is what makes the hand-over bit-exact. The reference's
    ``tree_attention`` (all branches concatenated in one sequence with a block-diagonal mask) is a different
    float computation (longer key axis, other reduction order); its logits are not those the next step would
    compute, so hand-over exactness would rest on luck, and our K/V slots are per canvas column (branches
    would collide). It is therefore refused with a one-line error rather than offered approximately.

    Batched and ragged: each row drafts, verifies and accepts its own chain length; rows that need no
    verification (one candidate left, or finishing now) are not charged for the verification forward in the
    per-row NFE. Statistics: ``Stats.counters["accepted"]`` holds one accepted length per row per
    verification; :func:`acceptance` gives mean and histogram.

    Caches: every cache, through its plan (no per-cache code). Full attention none/prefix/dual; the
    guarantee is relative to static decoding *with the same cache approximation* (spec §3.2). Block-causal
    none/block: the block commit is fused with the next block's first forward in our block cache, so the
    reference's separate store-KV forward does not exist; drafts stay inside the current decode span (an
    attention block, or a sub-block), i.e. the spec's eager acceptance mode (§3.6, drafts reaching into the
    next block) is not implemented — it would need commits and a hand-over across spans, and it saves at
    most the one forward per block that our fused commit already saves. A verification is only run when its
    logits can be handed over (``view.can_hand_over``: the next feed is ``ephemeral``); otherwise the step is a
    plain static step. That matters for ``sub_block``: while a row's sub-block still opens with MASK every
    forward refreshes the whole block (not ephemeral), so FreeDave verifies only once all rows' sub-blocks
    have their opening decided (NFE never above static's; per-row NFE then depends on the batch's rows).
    AR block openings (``ar_first``, Fast-dLLM v2): the forced opening step is a plain static step (no
    verification; the next step runs its own forward), exactly as static decoding spends it.

    Stops: a chain never runs past the state in which static decoding would retire the row (EOS with nothing
    masked before it), so canvases equal static's; stop *strings* are not simulated — output before the stop
    is equal, canvas cells decoded after it may differ.

    Refused (one-line errors): ``draft_steps`` < 1 or not an integer; temperature > 0 (the guarantee holds for
    greedy decoding only); classifier-free guidance; modifiers (hypotheses are not rescored, so a modified
    ranking cannot be verified); caches that cannot serve read-only hypotheses.

    Deviations from the reference decodes (``freedave_llada_{dual,prefix}cache_d4.json``): same tokens, NFE
    and per-forward commits. The reference records a block's refresh forward as a step with no commits and
    the accepted chain under the verification forward; here both forwards belong to one engine step (its
    real forward plus its verification). The reference's free last token of a block is an engine step
    without a forward. Batch size > 1 (the reference asserts 1) and block-causal families are ours.
    """

    draft_steps: int = 4
    draft_mode: str = "batch_expanding"

    #: threshold of the FreeDave++ base step (None: the static top-1 step — lossless)
    _threshold = None

    def validate(self) -> None:
        d = self.draft_steps
        if isinstance(d, bool) or not isinstance(d, int) or d < 1:
            raise ValueError(f"{self.name}: draft_steps must be an integer >= 1 (got {d!r})")
        if self.draft_mode not in LAYOUTS:
            why = (" (tree attention is a different float computation from the next step's forward, so its "
                   "logits cannot be handed over exactly)") if self.draft_mode == "tree_attention" else ""
            raise ValueError(f"{self.name}: draft_mode='{self.draft_mode}' is not available{why}; use 'batch_expanding'")

    def start(self, engine) -> None:
        settings = engine.settings
        if settings.temperature > 0:
            raise ValueError(f"{self.name} is lossless only for greedy decoding: use temperature=0 "
                             f"(got temperature={settings.temperature:g})")
        if settings.cfg_scale > 0:
            raise ValueError(f"{self.name}: classifier-free guidance (cfg_scale > 0) is not supported by hypothesis forwards")
        if engine.modifiers:
            names = ", ".join(m.name for m in engine.modifiers)
            raise ValueError(f"{self.name}: modifiers ({names}) are not supported: hypothesis forwards are not rescored, "
                             "so a modified ranking cannot be verified")
        if not getattr(engine.cache, "serves_hypotheses", True):
            raise ValueError(f"{self.name}: cache '{engine.cache.name}' cannot serve read-only hypothesis forwards; "
                             "use none, prefix, dual or block")
        self._kind = settings.confidence
        self._ar_block = None
        for plugin in engine.filters:
            if getattr(plugin, "name", "") == "ar_opening":
                self._ar_block = engine.canvas.block_size or 0

    # ------------------------------------------------------------------------------------------------
    def _forced_opening(self, view: StepView) -> bool:
        """The AR-opening filter takes this step (a block's first forward): it forces masked openings and the
        step does not count as a sampler step, so the next step's plan is not the one hypotheses would get."""
        block = getattr(self, "_ar_block", None)
        return block is not None and view.forwards == 0 and not (block and view.span[0] % block)

    def _first_fill(self, conf: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        """[B] positions the base step fills from a state: 1 (static) or threshold commits + top-1 (FreeDave++)."""
        count = masked.sum(-1)
        if self._threshold is None:
            return count.clamp(max=1)
        passed = (conf >= self._threshold) & masked
        return torch.maximum(passed.sum(-1), count.clamp(max=1))

    def select(self, view: StepView) -> Decision:
        masked, conf, x0 = view.masked, view.confidence, view.x0
        if self._forced_opening(view):  # a plain base step (the filter forces the openings)
            return Decision(top_k_mask(conf, self._first_fill(conf, masked)))
        b, w = masked.shape
        start, end = view.span
        window = view.canvas[:, start:end]
        remaining = masked.sum(-1)  # m
        first = self._first_fill(conf, masked)  # n1 >= 1 where m >= 1
        order = rank_order(conf)
        ranks = torch.empty_like(order)
        ranks.scatter_(-1, order, torch.arange(w, device=order.device).expand_as(order))
        # D' distinct nested drafts: draft_k fills the first c_k = n1 + k - 1 ranked candidates
        distinct = torch.where(remaining > 0, (remaining - first + 1).clamp(max=self.draft_steps), 0)
        h = max(int(distinct.max()), 1)
        fills = (first[:, None] + torch.arange(h, device=masked.device)[None, :]).clamp(max=remaining[:, None])  # [B, H]
        filled = masked[:, None, :] & (ranks[:, None, :] < fills[:, :, None])  # [B, H, W]
        drafts = torch.where(filled, x0[:, None, :], window[:, None, :])
        settles = self._settles(view, drafts)  # [B, H]
        # rows that verify: draft_1 leaves candidates and does not end the row
        need = (remaining > first) & ~settles[:, 0]
        best = (remaining > 0).long()  # accepted draft index (1-based); 0 = nothing to commit
        counters = {}
        next_logits = None
        if bool(need.any()) and (view.can_hand_over is None or view.can_hand_over(drafts[:, 0])):
            logits = view.forward(drafts, charge=need)  # [B, H, W, V], one NFE
            best = torch.where(need, self._accept(view, drafts, filled, logits, ranks, fills, distinct, x0), best)
            # never past the state in which static decoding retires the row
            cap = torch.where(settles, torch.arange(1, h + 1, device=masked.device)[None, :], h + 1).min(-1).values
            best = torch.minimum(best, cap)
            counters = {"accepted": best[need].tolist()}
            next_logits = logits[torch.arange(b, device=masked.device), (best - 1).clamp(min=0)]
        pick = (best - 1).clamp(min=0)
        chosen = drafts[torch.arange(b, device=masked.device), pick]
        commit = masked & (chosen != window)
        if next_logits is None:
            return Decision(commit, x0)
        return Decision(commit, x0, next_logits=next_logits, next_tokens=chosen, counters=counters)

    def _accept(self, view, drafts, filled, logits, ranks, fills, distinct, x0) -> torch.Tensor:
        """[B] longest accepted draft (1-based): walk best -> the largest i > best with draft_i ⊆ target_best
        (the spec's subset rule; for nested top-1 drafts it is the exact-match prefix rule)."""
        b, h, w = drafts.shape
        x0h, ch = propose_greedy(logits.reshape(b * h, w, -1), getattr(self, "_kind", "prob"), exclude=view.mask_id)
        candidates = view.masked[:, None, :] & ~filled  # [B, H, W] candidates of each draft
        ch = ch.view(b, h, w).masked_fill(~candidates, float("-inf"))
        x0h = x0h.view(b, h, w)
        # target_j fills: its base step (top-1, or threshold commits + top-1)
        top1 = top_k_mask(ch.reshape(b * h, w), torch.ones(b * h, dtype=torch.long, device=ch.device)).view(b, h, w)
        target = top1 if self._threshold is None else (top1 | ((ch >= self._threshold) & candidates))
        ok = target & (x0h == x0[:, None, :])  # [B, H, W]: target_j has the stale proposal at this column
        # first stale rank >= c_j where target_j disagrees; draft_i ⊆ target_j  <=>  c_i <= that rank
        remaining = view.masked.sum(-1)
        order_ok = torch.ones(b, h, w, dtype=torch.bool, device=ok.device)
        order_ok.scatter_(-1, ranks[:, None, :].expand(b, h, w), ok | ~view.masked[:, None, :])  # by rank
        rank_ids = torch.arange(w, device=ok.device)
        fail = ~order_ok & (rank_ids[None, None, :] >= fills[:, :, None]) & (rank_ids[None, None, :] < remaining[:, None, None])
        first_fail = torch.where(fail, rank_ids[None, None, :], remaining[:, None, None]).min(-1).values  # [B, H]
        first = fills[:, 0]
        reach = torch.minimum(first_fail - first[:, None] + 1, distinct[:, None])  # largest i with c_i <= first_fail
        best = torch.ones(b, dtype=torch.long, device=ok.device)
        for _ in range(h):
            best = torch.maximum(best, reach.gather(1, (best - 1)[:, None]).squeeze(1))
        return best

    def _settles(self, view: StepView, drafts: torch.Tensor) -> torch.Tensor:
        """[B, H] bool: the engine would retire the row in the state ``draft_k`` (EOS with nothing masked
        before it, or nothing masked left) — the engine's own rule, applied to each draft's full row."""
        b, h, w = drafts.shape
        start, end = view.span
        rows = view.canvas[:, None, :].expand(b, h, -1).clone()
        rows[:, :, start:end] = drafts
        cols = torch.arange(rows.shape[-1], device=rows.device)
        generated = (cols[None, :] >= view.gen_start[:, None]) & (cols[None, :] < (view.gen_start + view.gen_length)[:, None])
        width = rows.shape[-1]
        eos = view.eos_ids
        is_eos = (torch.isin(rows, eos) if eos is not None and eos.numel() else torch.zeros_like(rows, dtype=torch.bool))
        is_eos &= generated[:, None, :]
        first_eos = torch.where(is_eos, cols, width).min(-1).values
        undecided = (rows == view.mask_id) & generated[:, None, :] & (cols[None, None, :] < view.end[:, None, None])
        first_mask = torch.where(undecided, cols, width).min(-1).values
        return (first_mask > first_eos) | ~undecided.any(-1)


@register("freedave_plus")
@dataclass
class FreeDavePlus(FreeDave):
    """FreeDave++ (spec §3.7): threshold base steps with draft-and-verify — NOT lossless.

    The base step commits every candidate with confidence >= ``threshold`` (inclusive) plus the top-1
    (Fast-dLLM v1's rule). ``draft_1`` is that step from the current state; ``draft_{1+k}`` adds the next k
    candidates in the stale ranking. One batched forward scores all drafts; ``target_j`` is the threshold step
    from ``draft_j`` with its fresh logits; acceptance follows the spec's ``subset`` rule (walk to the largest
    draft whose committed tokens all appear, with the same values, in ``target_best``). Accepting a strict
    subset of the threshold decoder's next state leaves its trajectory, so the output equals neither static
    nor threshold decoding in general (the authors claim quality is inherited); with ``draft_steps=1`` it is
    exactly ``sampler="threshold"`` (same tokens and NFE). Default threshold 0.95 (the reference's LLaDA/Dream
    setting).
    """

    threshold: float = 0.95

    def validate(self) -> None:
        super().validate()
        if not self.threshold >= 0:
            raise ValueError(f"{self.name}: threshold must be >= 0 (got {self.threshold})")

    @property
    def _threshold(self):  # type: ignore[override]
        return self.threshold


def acceptance(stats) -> dict:
    """Accepted draft lengths of a FreeDave run (``out.stats``; also ``stats.counter_summaries["accepted"]``):
    number of verifications (one per row per verification forward), mean and histogram."""
    summary = stats.counter_summaries.get("accepted", {"count": 0, "mean": 0.0, "histogram": {}})
    return {"verifications": summary["count"], "mean": summary["mean"], "histogram": summary["histogram"]}
