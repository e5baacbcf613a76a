"""The decoding engine and its samplers: invariants, determinism, stop rules, registry, bad input."""

from dataclasses import dataclass

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dllm
from dllm.samplers.static import cumulative_quota, scheduled_count

from helpers import check_progress, golden_model, random_model, random_prompts

FAMILIES = ["llada", "dream", "fast_dllm_v2", "sdar", "llada_moe", "llada2"]


# --------------------------------------------------------------------------------------------------
# progress (property test over random tiny models and settings)
# --------------------------------------------------------------------------------------------------
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    family=st.sampled_from(FAMILIES),
    seed=st.integers(0, 10_000),
    sampler=st.sampled_from(["static", "threshold", "factor", "dimple"]),
    threshold=st.floats(0.0, 1.2),
    steps_per_block=st.sampled_from([1, 2, 3, 8]),
    batch=st.integers(1, 4),
    use_cache=st.booleans(),
)
def test_every_step_commits_at_least_one_masked_position(family, seed, sampler, threshold, steps_per_block, batch, use_cache):
    model = random_model(family, seed % 7)
    block_causal = model.attention == "block_causal"
    gen_length, block_length = 16, (4 if block_causal else 8)
    options = {"static": dict(sampler="static", steps=steps_per_block * 4 if block_causal else steps_per_block * 2),
               "threshold": dict(sampler="threshold", threshold=threshold),
               "factor": dict(sampler="threshold", factor=max(threshold, 0.05)),
               "dimple": dict(sampler="threshold", threshold=threshold, strict=True, fallback="schedule")}[sampler]
    cache = ("block" if block_causal else "dual") if use_cache else "none"
    out = dllm.generate(model, random_prompts(model, batch, seed), gen_length=gen_length, block_length=block_length,
                        cache=cache, return_trajectory=True, **options)
    check_progress(model, out, set(model.eos_ids))
    for row, canvas in enumerate(out.canvases):
        generated = canvas[out.prompt_lengths[row]:]
        first_eos = next((i for i, t in enumerate(generated) if t in model.eos_ids), len(generated))
        assert model.mask_id not in generated[:first_eos], "a row stopped with undecided tokens before its end"


def test_scheduled_count_reproduces_llada_quota_tables():
    def quotas(n, steps):
        masked, out = torch.ones(1, n, dtype=torch.bool), []
        for i in range(steps):
            k = int(scheduled_count(masked, steps - i))
            out.append(k)
            masked[0, :k] = False
            masked = masked[:, k:] if k else masked
        return out

    assert quotas(32, 5) == [7, 7, 6, 6, 6]
    assert quotas(7, 7) == [1] * 7
    assert quotas(32, 64)[:32] == [1] * 32
    for n, steps in ((32, 5), (7, 7), (30, 4), (3, 8)):  # the capped threshold rule reads the same table, summed
        table = quotas(n, steps)
        assert [int(cumulative_quota(torch.tensor([n]), steps, done)) for done in range(1, steps + 1)] == \
            [sum(table[:done]) for done in range(1, steps + 1)]


# --------------------------------------------------------------------------------------------------
# static and threshold semantics
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_static_one_token_per_step(family):
    model = random_model(family, 1)
    gen_length = 16
    out = dllm.generate(model, random_prompts(model, 1, 3), sampler="static", steps=gen_length, gen_length=gen_length,
                        eos_ids=(), return_trajectory=True)
    assert all(len(step.commits[0]) == 1 for step in out.trajectory.steps)
    assert out.stats.nfe == gen_length
    assert out.stats.tokens == gen_length and out.stats.tpf == 1.0


@pytest.mark.parametrize("family", FAMILIES)
def test_threshold_above_one_equals_static_one_token_per_step(family):
    model = random_model(family, 2)
    prompts = random_prompts(model, 3, 5)
    kw = dict(gen_length=16, block_length=4 if model.attention == "block_causal" else 8, return_trajectory=True)
    static = dllm.generate(model, prompts, sampler="static", steps=16, **kw)
    threshold = dllm.generate(model, prompts, sampler="threshold", threshold=1.01, **kw)
    assert threshold.canvases == static.canvases
    assert [s.commits for s in threshold.trajectory.steps] == [s.commits for s in static.trajectory.steps]
    assert threshold.stats.nfe == static.stats.nfe


@pytest.mark.parametrize("family", ["llada", "dream", "llada_moe"])
def test_threshold_zero_finishes_a_block_in_one_step(family):
    model = random_model(family, 3)
    out = dllm.generate(model, random_prompts(model, 2, 1), sampler="threshold", threshold=0.0, gen_length=32,
                        block_length=8, eos_ids=())
    assert out.stats.nfe == 4


def test_threshold_rules_on_the_spec_vectors():
    """R2 (inclusive), R2' (strict) and the factor rule in both modes (spec §10)."""
    from dllm.engine.view import StepView

    def view(conf):
        conf = torch.tensor([conf])
        return StepView(logits=torch.zeros(1, conf.shape[1], 4), x0=torch.zeros_like(conf, dtype=torch.long),
                        confidence=conf, masked=torch.ones_like(conf, dtype=torch.bool), span=(0, conf.shape[1]),
                        step=0, steps_per_span=None, canvas=torch.zeros(1, 4, dtype=torch.long), rows=torch.arange(1))

    pick = lambda sampler, c: sampler.select(view(c))[0].nonzero().flatten().tolist()
    c = [0.95, 0.91, 0.90, 0.5]
    assert pick(dllm.samplers.build("threshold", {"threshold": 0.9}), c) == [0, 1, 2]
    assert pick(dllm.samplers.build("threshold", {"threshold": 0.9, "strict": True}), c) == [0, 1]
    quirk = [0.99, 0.85, 0.78, 0.50]
    assert len(pick(dllm.samplers.build("threshold", {"factor": 1.0}), quirk)) == 3
    assert len(pick(dllm.samplers.build("threshold", {"factor": 1.0, "factor_rule": "reference"}), quirk)) == 4
    both = [0.99, 0.85, 0.6, 0.5, 0.4]
    assert len(pick(dllm.samplers.build("threshold", {"factor": 1.0}), both)) == 2
    assert len(pick(dllm.samplers.build("threshold", {"factor": 1.0, "factor_rule": "reference"}), both)) == 2
    assert pick(dllm.samplers.build("threshold", {"threshold": 0.99}), [0.2, 0.7, 0.7]) == [1]  # tie: lowest position


# --------------------------------------------------------------------------------------------------
# batch invariance (greedy, ragged left-padded batch of 8) for every family in the goldens
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("sampler", [dict(sampler="static", steps=16), dict(sampler="threshold", threshold=0.5)])
def test_batch_invariance(family, sampler):
    model = random_model(family, 4)
    prompts = random_prompts(model, 8, 11, low=2, high=21)
    assert len({len(p) for p in prompts}) > 4
    kw = dict(gen_length=16, block_length=4 if model.attention == "block_causal" else 8, **sampler)
    batch = dllm.generate(model, prompts, **kw)
    for row, prompt in enumerate(prompts):
        alone = dllm.generate(model, [prompt], **kw)
        assert alone.canvases[0] == batch.canvases[row], f"row {row} differs alone vs in the batch"
        assert alone.texts[0] == batch.texts[row]


@pytest.mark.parametrize("family", ["llada", "dream"])  # dream: the logit shift (the span's opening column)
def test_rows_with_nothing_left_in_the_span_sit_out_uncached_forwards(family):
    """A row whose span is finished waits for the others without entering the network, and decodes as alone."""
    model = random_model(family, 4)
    prompts = random_prompts(model, 8, 11, low=2, high=21)
    seen = []
    network_forward = model.network.forward

    def counting(ids, *args, **kwargs):
        seen.append(ids.shape[0])
        return network_forward(ids, *args, **kwargs)

    kw = dict(gen_length=16, block_length=8, sampler="threshold", threshold=0.5, cache="none")
    model.network.forward = counting
    try:
        batch = dllm.generate(model, prompts, **kw)
    finally:
        del model.network.forward
    assert max(batch.stats.row_nfe) > min(batch.stats.row_nfe)  # rows finished their spans at different steps
    assert len(seen) == batch.stats.nfe and min(seen) < len(prompts)
    assert sum(seen) == sum(batch.stats.row_nfe)  # every row in a forward had something to decode
    for row, prompt in enumerate(prompts):
        assert dllm.generate(model, [prompt], **kw).canvases[0] == batch.canvases[row], f"row {row}"


# --------------------------------------------------------------------------------------------------
# sampling determinism, guidance, stop rules, statistics
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sampler", [dict(sampler="static", steps=16), dict(sampler="static", remasking="random"),
                                     dict(sampler="threshold", threshold=0.6)])
def test_same_seed_same_output_with_temperature(sampler):
    model = random_model("llada", 5, sharpness=2.0)
    prompts = random_prompts(model, 3, 2)
    run = lambda seed: dllm.generate(model, prompts, temperature=1.0, seed=seed, gen_length=16, block_length=8, **sampler).canvases
    assert run(123) == run(123)
    assert run(123) != run(124)


def test_classifier_free_guidance_runs_with_every_cache():
    model = random_model("llada", 6)
    prompts = random_prompts(model, 3, 4)
    plain = dllm.generate(model, prompts, gen_length=16, block_length=8, steps=16)
    guided_none = dllm.generate(model, prompts, gen_length=16, block_length=8, steps=16, cfg_scale=1.5)
    assert guided_none.canvases != plain.canvases
    for cache in ("prefix", "dual"):
        exact = dllm.generate(model, prompts, gen_length=16, block_length=8, steps=16, cfg_scale=1.5, cache=cache, refresh_every=1)
        assert exact.canvases == guided_none.canvases
        assert guided_none.stats.nfe == exact.stats.nfe


def test_eos_settles_rows_early_and_counts_tokens_before_eos():
    model = random_model("llada", 7)
    prompts = random_prompts(model, 4, 6)
    free = dllm.generate(model, prompts, gen_length=32, block_length=8, steps=32, eos_ids=())
    # pick a token the model emits early in row 0 and declare it EOS: that row must stop right there
    generated = free.canvases[0][free.prompt_lengths[0]:]
    eos = generated[3]
    out = dllm.generate(model, prompts, gen_length=32, block_length=8, steps=32, eos_ids=(eos,))
    first = generated.index(eos)
    assert out.sequences[0] == generated[:first]
    assert out.stats.row_tokens[0] == first
    assert out.stats.row_nfe[0] < free.stats.row_nfe[0]
    assert out.stats.tokens == sum(len(s) for s in out.sequences)


def test_stop_strings_cut_the_text_and_stop_the_row_inside_the_loop():
    model = random_model("llada", 8)
    prompts = random_prompts(model, 2, 8)
    free = dllm.generate(model, prompts, gen_length=32, block_length=8, steps=32, eos_ids=())
    text = free.texts[0]
    stop = text[5:7]
    out = dllm.generate(model, prompts, gen_length=32, block_length=8, steps=32, eos_ids=(), stop=[stop])
    assert out.texts[0] == text[: text.index(stop)]
    assert out.stats.row_nfe[0] < free.stats.row_nfe[0]
    assert model.decode(out.sequences[0]) == out.texts[0]


@pytest.mark.parametrize("family,cache", [("dream", "dual"), ("sdar", "block"), ("fast_dllm_v2", "block")])
def test_stats_and_trajectory_frames(family, cache):
    model = random_model(family, 9)
    block = 8 if model.attention == "full" else None
    out = dllm.generate(model, random_prompts(model, 3, 9), sampler="threshold", threshold=0.7, gen_length=16,
                        block_length=block, cache=cache, return_trajectory=True, eos_ids=())
    steps = out.trajectory.steps
    assert out.stats.nfe == len(steps)
    assert out.stats.cache["cache"] == cache and out.stats.sampler["sampler"] == "threshold"
    # counted independently of the engine's counters: a row pays for the forwards in which it committed
    # something (without hand-over every forward with candidates commits at least one token)
    row_forwards = [sum(1 for step in steps if step.commits[r]) for r in range(3)]
    assert out.stats.row_nfe == row_forwards
    assert out.stats.tokens == sum(len(s) for s in out.sequences) == 3 * 16
    assert out.stats.tpf == pytest.approx(3 * 16 / sum(row_forwards))
    assert out.stats.seconds > 0 and out.stats.tokens_per_second > 0
    # the last frame is exactly each row's canvas: no alignment padding of block-causal layouts leaks in
    assert out.trajectory.frame(len(steps)) == out.canvases


def test_string_prompts_and_chat_template():
    model = golden_model("llada")
    out = dllm.generate(model, ["Hello", "2+3=?"], chat=True, gen_length=8, block_length=8, steps=8)
    assert out.prompt_lengths == [len(model.encode("Hello", chat=True)), len(model.encode("2+3=?", chat=True))]
    assert len(out.texts) == 2


# --------------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------------
def test_registry_lists_samplers_and_accepts_third_party_ones():
    assert {"static", "threshold"} <= set(dllm.samplers.available())

    @dllm.samplers.register("leftmost_test")
    @dataclass
    class Leftmost(dllm.samplers.Sampler):
        width: int = 2

        def select(self, view):
            ranks = view.masked.long().cumsum(-1)
            return view.masked & (ranks <= self.width)

    assert "leftmost_test" in dllm.samplers.available()
    model = random_model("llada", 10)
    out = dllm.generate(model, random_prompts(model, 2, 3), sampler="leftmost_test", width=4, gen_length=16,
                        block_length=8, return_trajectory=True, eos_ids=())
    assert out.stats.nfe == 4
    assert all(sorted(p for p, _ in step.commits[0]) == list(range(min(p for p, _ in step.commits[0]), min(p for p, _ in step.commits[0]) + 4))
               for step in out.trajectory.steps)


# --------------------------------------------------------------------------------------------------
# bad input: one-line errors that name the fix
# --------------------------------------------------------------------------------------------------
def one_line_error(exc_type, fn, *fragments):
    with pytest.raises(exc_type) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_bad_input_errors():
    model = golden_model("llada")
    prompt = [[20, 21, 22]]
    one_line_error(ValueError, lambda: dllm.generate(model, prompt, gen_length=30, block_length=8), "multiple of block_length")
    one_line_error(ValueError, lambda: dllm.generate(model, prompt, gen_length=32, block_length=8, steps=6),
                   "not a multiple of the number of blocks")
    one_line_error(ValueError, lambda: dllm.generate(model, prompt, sampler="nope"), "unknown sampler", "static")
    one_line_error(ValueError, lambda: dllm.generate(model, prompt, sampler="threshold", treshold=0.9),
                   "unknown option 'treshold'", "threshold")
    one_line_error(ValueError, lambda: dllm.generate(model, [[20] * 60], gen_length=32), "exceeds the model's context")
    one_line_error(ValueError, lambda: dllm.generate(model, []), "prompts is empty")
    one_line_error(ValueError, lambda: dllm.generate(model, [""]), "prompt 0 is empty")
    one_line_error(ValueError, lambda: dllm.generate(model, prompt, cache="block"), "caches that fit: none, prefix, dual")
    one_line_error(ValueError, lambda: dllm.generate(model, prompt, sampler="threshold", threshold=-1), "threshold must be >= 0")
    one_line_error(ValueError, lambda: dllm.generate(model, [[model.mask_id, 20]]), "mask token")
    one_line_error(ValueError, lambda: dllm.generate(golden_model("sdar"), prompt, block_length=3), "must divide the model's block size")
