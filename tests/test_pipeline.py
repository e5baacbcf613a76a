"""The step pipeline: modifiers, filters, hypothesis forwards and hand-over, streaming, per-row state/seeds/NFE,
and the methods on it (LocalLeap, EOSER, the ascending step-size schedule, the EGP oracle)."""

import json
from dataclasses import dataclass

import pytest
import torch

import dllm
from dllm.engine.loop import DecodeError
from dllm.samplers.static import ascending_plan

from conftest import DECODES
from helpers import golden_model, one_line_error, random_model, random_prompts

FULL_CACHES = ("none", "prefix", "dual")


# --------------------------------------------------------------------------------------------------
# LocalLeap
# --------------------------------------------------------------------------------------------------
def test_localleap_reproduces_the_reference_decodes():
    ref = json.loads((DECODES / "llada_peaky" / "localleap_k0.9_t0.75_w4_nocache.json").read_text())
    model = dllm.load(DECODES / "llada_peaky")
    call = ref["call"]
    for case in ref["per_prompt_calls"]:
        out = dllm.generate(model, [case["prompt_ids"]], sampler="localleap", kappa=call["threshold"],
                            tau=call["relaxed_threshold"], radius=call["radius"], gen_length=call["gen_length"],
                            block_length=call["block_length"], return_trajectory=True)
        assert out.canvases[0] == case["sequence"]
        assert [[[p, t] for p, t in s.commits[0]] for s in out.trajectory.steps] == case["trajectory"]
        assert out.stats.nfe == case["nfe"]


@pytest.mark.parametrize("family", ["llada", "dream", "sdar"])
def test_localleap_with_kappa_above_one_is_one_token_per_step(family):
    model = random_model(family, 3)
    prompts = random_prompts(model, 3, 4)
    block = 8 if model.attention == "full" else None
    leap = dllm.generate(model, prompts, sampler="localleap", kappa=1.01, tau=0.5, gen_length=16, block_length=block,
                         eos_ids=())
    static = dllm.generate(model, prompts, sampler="static", gen_length=16, block_length=block, eos_ids=())
    assert leap.canvases == static.canvases
    assert leap.stats.nfe == static.stats.nfe


def test_localleap_relaxes_only_near_anchors():
    sampler = dllm.samplers.build("localleap", {"kappa": 0.9, "tau": 0.5, "radius": 1})
    conf = torch.tensor([[0.95, 0.6, 0.6, 0.6, 0.4]])
    view = dllm.StepView(logits=None, x0=torch.zeros(1, 5, dtype=torch.long), confidence=conf,
                         masked=torch.ones(1, 5, dtype=torch.bool), span=(0, 5), step=0, steps_per_span=None,
                         canvas=torch.zeros(1, 5, dtype=torch.long), rows=torch.arange(1))
    assert sampler.select(view).tolist() == [[True, True, False, False, False]]


# --------------------------------------------------------------------------------------------------
# EOSER and the ascending step-size schedule
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sampler,options", [("static", {}), ("threshold", {"threshold": 0.7}),
                                             ("localleap", {}), ("static", {"schedule": "ascending"})])
def test_eoser_with_unit_gammas_equals_the_bare_sampler(sampler, options):
    model = random_model("llada", 5)
    prompts = random_prompts(model, 3, 6)
    bare = dllm.generate(model, prompts, sampler=sampler, gen_length=32, block_length=32, **options)
    worn = dllm.generate(model, prompts, sampler=sampler, gen_length=32, block_length=32, modifiers=["eoser"],
                         gamma_min=1.0, gamma_max=1.0, **options)
    assert worn.canvases == bare.canvases and worn.stats.nfe == bare.stats.nfe
    assert worn.stats.modifiers == [{"modifier": "eoser", "gamma_min": 1.0, "gamma_max": 1.0}]


def test_eoser_delays_eos_commits():
    model = random_model("llada", 7)
    eos = model.eos_ids[0]
    prompts = random_prompts(model, 4, 8)

    def first_eos_step(out):
        steps = [i for i, s in enumerate(out.trajectory.steps) for row in s.commits for _, t in row if t == eos]
        return min(steps) if steps else len(out.trajectory.steps)

    bias = lambda logits, ctx: logits.index_add(-1, torch.tensor([eos]), torch.full(logits.shape[:-1] + (1,), 12.0))
    bare = dllm.generate(model, prompts, gen_length=32, block_length=32, processors=[bias], return_trajectory=True)
    worn = dllm.generate(model, prompts, gen_length=32, block_length=32, processors=[bias], return_trajectory=True,
                         modifiers=["eoser"], gamma_min=0.01)
    assert first_eos_step(worn) > first_eos_step(bare)


def test_ascending_schedule_quotas_and_layout():
    assert ascending_plan(128, 1) == ((128,), (0,), (1, 2, 4, 8, 16, 32, 65))
    assert ascending_plan(128, 4)[0] == (15, 16, 32, 65)
    assert ascending_plan(256, 2)[0] == (127, 129)
    model = random_model("llada", 9)
    prompts = random_prompts(model, 2, 9)
    assert ascending_plan(32, 3) == ((7, 8, 17), (0, 3, 4), (1, 2, 4, 8, 17))
    out = dllm.generate(model, prompts, sampler="static", schedule="ascending", gen_length=32, block_length=32,
                        eos_ids=(), return_trajectory=True)
    assert out.stats.nfe == 5
    assert [len(s.commits[0]) for s in out.trajectory.steps] == [1, 2, 4, 8, 17]
    assert ascending_plan(30, 3) == ((3, 4, 23), (0, 2, 3), (1, 2, 4, 23))
    three = dllm.generate(model, prompts, sampler="static", schedule="ascending", gen_length=30, block_length=10,
                          eos_ids=(), return_trajectory=True)
    assert [len(s.commits[0]) for s in three.trajectory.steps] == [1, 2, 4, 23]
    assert [s.span[1] - s.span[0] for s in three.trajectory.steps] == [3, 3, 4, 23]
    one_line_error(ValueError, lambda: dllm.generate(model, prompts, sampler="static", schedule="ascending",
                                                     gen_length=32, steps=5), "do not pass steps")


# --------------------------------------------------------------------------------------------------
# filters
# --------------------------------------------------------------------------------------------------
@dllm.filters.register("ban_token_test")
@dataclass
class BanToken(dllm.filters.Filter):
    token: int = 0

    def start(self, engine):
        self.seen = []

    def reject(self, view, decision):
        self.seen.append(decision.tokens[decision.commit].tolist())
        return decision.tokens == self.token


@dllm.filters.register("ban_all_test")
@dataclass
class BanAll(dllm.filters.Filter):
    def reject(self, view, decision):
        return decision.commit.clone()


@pytest.mark.parametrize("family,cache", [("llada", "none"), ("llada", "dual"), ("fast_dllm_v2", "block"),
                                          ("dream", "prefix")])
def test_a_filter_sees_every_committed_token_and_its_ban_holds(family, cache):
    model = random_model(family, 11)
    prompts = random_prompts(model, 3, 12)
    plain = dllm.generate(model, prompts, sampler="threshold", threshold=0.6, cache=cache, gen_length=16,
                          block_length=8, eos_ids=(), return_trajectory=True)
    banned = max(set(t for c in plain.canvases for t in c[-16:]), key=lambda t: sum(c.count(t) for c in plain.canvases))
    ban = BanToken(token=banned)
    out = dllm.generate(model, prompts, sampler="threshold", threshold=0.6, cache=cache, gen_length=16, block_length=8,
                        eos_ids=(), filters=[ban], return_trajectory=True)
    assert all(banned not in c[-16:] for c in out.canvases)
    landed = sorted(t for s in out.trajectory.steps for row in s.commits for _, t in row)
    # every landed token passed the filter (the filter saw it in the decision that was finally committed)
    seen = sorted(t for group in ban.seen for t in group)
    assert all(landed.count(t) <= seen.count(t) for t in set(landed))
    if family == "fast_dllm_v2":  # the AR opening token goes through the filter too
        assert any(len(s.commits[0]) == 1 for s in out.trajectory.steps)


def test_a_filter_that_bans_everything_ends_rows_as_stuck():
    model = random_model("llada", 13)
    prompts = random_prompts(model, 2, 14)
    out = dllm.generate(model, prompts, gen_length=16, block_length=8, filters=["ban_all_test"], max_rejections=5,
                        eos_ids=())
    assert out.status == ["stuck", "stuck"]
    assert all("stuck" in out.stats.reasons[r] and "\n" not in out.stats.reasons[r] for r in (0, 1))
    assert out.stats.nfe <= 8


def test_plugin_bad_input_errors():
    model = random_model("llada", 15)
    prompts = random_prompts(model, 1, 16)
    one_line_error(ValueError, lambda: dllm.generate(model, prompts, modifiers=["eosr"]), "unknown modifier 'eosr'",
                   "did you mean 'eoser'")
    one_line_error(ValueError, lambda: dllm.generate(model, prompts, filters=["ban_al_test"]), "unknown filter",
                   "ban_all_test")
    one_line_error(ValueError, lambda: dllm.generate(model, prompts, modifiers=["eoser"], gamma_min=2.0), "gamma_min")

    class Outside(dllm.filters.Filter):
        name = "outside"

        def adjust(self, view, decision):
            if view.step > 0:  # by then the span holds committed (non-candidate) positions
                decision.commit = torch.ones_like(decision.commit)
            return decision

    class Masking(dllm.filters.Filter):
        name = "masking"

        def adjust(self, view, decision):
            decision.tokens = torch.full_like(decision.tokens, view.mask_id)
            return decision

    for plugin, fragment in ((Outside(), "not a candidate"), (Masking(), "MASK token")):
        one_line_error(DecodeError, lambda: dllm.generate(model, prompts, gen_length=16, block_length=8,
                                                          filters=[plugin]), fragment)
    one_line_error(ValueError, lambda: dllm.filters.register("ban_all_test")(BanToken), "already registered")


# --------------------------------------------------------------------------------------------------
# hypothesis forwards and hand-over
# --------------------------------------------------------------------------------------------------
@dllm.samplers.register("handover_test")
@dataclass
class HandOver(dllm.samplers.Sampler):
    """One token per step, but the next step's logits come from a hypothesis forward of the committed state."""

    def select(self, view):
        commit = dllm.engine.top_k_mask(view.confidence, torch.ones_like(view.masked_count))
        filled = torch.where(commit, view.x0, view.canvas[:, view.span[0]:view.span[1]])
        logits = view.forward(filled[:, None])[:, 0]
        return dllm.Decision(commit, view.x0, next_logits=logits, next_tokens=filled)


@pytest.mark.parametrize("family,cache", [("llada", c) for c in FULL_CACHES] + [("dream", "dual"),
                                          ("fast_dllm_v2", "block"), ("sdar", "none")])
def test_handed_over_logits_equal_the_forward_they_replace(family, cache):
    model = random_model(family, 17)
    prompts = random_prompts(model, 3, 18)
    kw = dict(cache=cache, gen_length=16, block_length=8 if model.attention == "full" else None, eos_ids=())
    static = dllm.generate(model, prompts, sampler="static", **kw)
    stream = dllm.stream(model, prompts, sampler="handover_test", **kw)
    skipped = sum(not event.forward for event in stream)
    assert stream.result.canvases == static.canvases
    assert skipped > 0  # the hand-over was used, not silently replaced by forwards


def test_hypotheses_never_change_the_cache():
    model = random_model("llada", 19)
    prompts = random_prompts(model, 2, 20)

    @dataclass
    class Probe(dllm.samplers.Sampler):
        name = "probe"

        def select(self, view):
            noise = torch.randint(20, 100, (view.masked.shape[0], 3, view.span[1] - view.span[0]))
            view.forward(noise)
            return dllm.engine.top_k_mask(view.confidence, torch.ones_like(view.masked_count))

    for cache in FULL_CACHES:
        probed = dllm.generate(model, prompts, sampler=Probe(), cache=cache, gen_length=16, block_length=8, eos_ids=())
        static = dllm.generate(model, prompts, sampler="static", cache=cache, gen_length=16, block_length=8, eos_ids=())
        assert probed.canvases == static.canvases
        assert probed.stats.nfe == 2 * static.stats.nfe  # each hypothesis forward is one NFE


# --------------------------------------------------------------------------------------------------
# streaming
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sampler", ["static", "threshold"])
def test_stream_events_rebuild_the_output(sampler):
    model = random_model("llada", 21)
    prompts = random_prompts(model, 3, 22)
    out = dllm.generate(model, prompts, sampler=sampler, cache="dual", gen_length=16, block_length=8)
    events = []
    stream = dllm.stream(model, prompts, sampler=sampler, cache="dual", gen_length=16, block_length=8)
    for event in stream:
        events.append(event)
    assert len(events) == out.stats.nfe == sum(e.forward for e in events)
    for row, canvas in enumerate(out.canvases):
        rebuilt = [model.mask_id] * 16
        for event in events:
            for position, token in event.commits.get(row, []):
                rebuilt[position] = token
        assert rebuilt == canvas[-16:]
    assert stream.result.canvases == out.canvases


# --------------------------------------------------------------------------------------------------
# per-row NFE, seeds, defaults, non-finite logits, the oracle
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family,cache", [("llada", c) for c in FULL_CACHES] + [("fast_dllm_v2", "block"),
                                          ("fast_dllm_v2", "none")])
@pytest.mark.parametrize("sampler", ["static", "threshold"])
def test_per_row_nfe_is_what_the_row_costs_alone(family, cache, sampler):
    model = random_model(family, 23)
    prompts = random_prompts(model, 4, 24)
    kw = dict(sampler=sampler, threshold=0.5, cache=cache, gen_length=16) if sampler == "threshold" else \
        dict(sampler=sampler, cache=cache, gen_length=16)
    if model.attention == "full":
        kw["block_length"] = 8
    batch = dllm.generate(model, prompts, **kw)
    alone = [dllm.generate(model, [p], **kw).stats.row_nfe[0] for p in prompts]
    assert batch.stats.row_nfe == alone


def test_seeds_are_per_row_and_batch_independent():
    model = random_model("llada", 25)
    prompts = random_prompts(model, 3, 26)
    kw = dict(sampler="threshold", threshold=0.7, gen_length=16, block_length=8, temperature=1.0)
    batch = dllm.generate(model, prompts, seed=[5, 6, 7], **kw)
    alone = [dllm.generate(model, [p], seed=[s], **kw).canvases[0] for p, s in zip(prompts, (5, 6, 7))]
    assert batch.canvases == alone
    reordered = dllm.generate(model, prompts[::-1], seed=[7, 6, 5], **kw)
    assert reordered.canvases == batch.canvases[::-1]
    assert dllm.generate(model, prompts, seed=5, **kw).canvases == batch.canvases  # int seed: row i gets seed + i
    one_line_error(ValueError, lambda: dllm.generate(model, prompts, seed="x", **kw), "seed must be an integer")
    one_line_error(ValueError, lambda: dllm.generate(model, prompts, seed=[1], **kw), "one seed per prompt")


def test_random_remasking_is_batch_independent():
    model = random_model("llada", 27)
    prompts = random_prompts(model, 3, 28)
    kw = dict(sampler="static", remasking="random", gen_length=16, block_length=8, eos_ids=())
    batch = dllm.generate(model, prompts, seed=3, **kw)
    assert batch.canvases == [dllm.generate(model, [p], seed=3 + i, **kw).canvases[0] for i, p in enumerate(prompts)]


def test_the_python_api_uses_the_checkpoint_canvas():
    out = dllm.generate(dllm.load("tiny"), "Sort: 3 1 2\n")
    assert out.texts == ["1 2 3"]


def test_request_errors():
    model = golden_model("llada")
    prompt = [[20, 21, 22]]
    one_line_error(ValueError, lambda: dllm.generate(model, prompt, gen_length=16, stop=""), "non-empty")
    one_line_error(ValueError, lambda: dllm.generate(model, prompt, gen_length=16, steps=True), "steps must be")
    one_line_error(ValueError, lambda: dllm.generate(model, prompt, gen_length=16, trajectory=True), "return_trajectory")
    one_line_error(ValueError, lambda: dllm.generate(model, prompt, gen_length=16, temperature="hot"), "temperature")


def test_non_finite_logits_end_with_a_one_line_error():
    model = random_model("llada", 29)
    poison = lambda logits, ctx: logits.masked_fill(torch.zeros_like(logits, dtype=torch.bool).index_fill_(0, torch.tensor([1]), True), float("nan"))
    one_line_error(DecodeError, lambda: dllm.generate(model, random_prompts(model, 2, 30), gen_length=16, block_length=8,
                                                      processors=[poison]), "non-finite logits", "[1]")


@pytest.mark.parametrize("cache", FULL_CACHES)
def test_the_oracle_reaches_its_target_in_fewer_forwards(cache):
    model = random_model("llada", 31)
    prompts = random_prompts(model, 4, 32)
    kw = dict(cache=cache, gen_length=32, block_length=8)
    static = dllm.generate(model, prompts, sampler="static", **kw)
    targets = [c[-32:] for c in static.canvases]
    oracle = dllm.generate(model, prompts, sampler="oracle", targets=targets, **kw)
    assert oracle.canvases == static.canvases
    assert oracle.stats.nfe <= static.stats.nfe


@dllm.filters.register("ban_every_token_test")
@dataclass
class BanEveryToken(dllm.filters.Filter):
    """Bans every token at a position by rejecting whatever is proposed (the vocabulary runs out)."""

    def reject(self, view, decision):
        return decision.commit.clone()


def test_a_row_whose_positions_run_out_of_tokens_ends_stuck_without_looping():
    model = random_model("llada", 33)
    prompts = random_prompts(model, 1, 34)
    out = dllm.generate(model, prompts, gen_length=8, block_length=8, filters=["ban_every_token_test"],
                        max_rejections=10**9, eos_ids=())
    assert out.status == ["stuck"]


def test_a_sampler_that_commits_mask_is_stopped_with_a_one_line_error():
    model = random_model("llada", 35)

    @dataclass
    class MaskingSampler(dllm.samplers.Sampler):
        name = "masking_sampler"

        def select(self, view):
            return view.masked, torch.full_like(view.x0, view.mask_id)

    one_line_error(DecodeError, lambda: dllm.generate(model, random_prompts(model, 2, 36), sampler=MaskingSampler(),
                                                      gen_length=8, block_length=8), "MASK token", "masking_sampler")


def test_system_prompt_and_chat_template_arguments_reach_the_template():
    model = golden_model("sdar")
    plain = dllm.generate(model, "Hi", chat=True, gen_length=4)
    thinking_off = dllm.generate(model, "Hi", chat=True, system="Be brief.", gen_length=4,
                                 chat_template_kwargs={"enable_thinking": False})
    expected = model.encode("Hi", chat=True, system="Be brief.", template_kwargs={"enable_thinking": False})
    assert thinking_off.prompt_lengths == [len(expected)] and thinking_off.prompt_lengths != plain.prompt_lengths
    assert "</think>" in model.tokenizer.decode(expected)
