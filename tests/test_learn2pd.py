"""Learn2PD: EGP traces, filter training and files, the learn2pd sampler, End-of-Text prediction."""

import json
import shutil
from dataclasses import dataclass

import pytest
import torch

import dllm
from dllm.engine.view import Decision, StepView
from dllm.filters.eotp import Eotp
from dllm.learn2pd import FilterError, load_filter
from dllm.learn2pd.cli import train_filter_main
from dllm.learn2pd.labels import EgpLabeler
from dllm.learn2pd.pipeline import train_filter
from dllm.learn2pd.prompts import task_prompts
from dllm.learn2pd.traces import collect_traces
from dllm.learn2pd.training import FitSettings
from dllm.samplers.learn2pd import Learn2PD
from dllm.samplers.static import Static
from dllm.tiny import tasks

from helpers import one_line_error, random_model, random_prompts

QUICK = FitSettings(max_iterations=300, eval_every=25, patience=100)


@pytest.fixture(scope="module")
def tiny():
    return dllm.load("tiny", device="cpu")


@pytest.fixture(scope="module")
def prompts():
    return task_prompts(list(tasks.TASKS), 4, seed=0)


@pytest.fixture(scope="module")
def trained(tiny, prompts, tmp_path_factory):
    out = tmp_path_factory.mktemp("filter")
    train_filter(tiny, prompts, out, settings=QUICK, progress=False, log=lambda *_: None)
    return out


@pytest.fixture(scope="module")
def test_prompts():
    return [e.prompt for task in tasks.TASKS for e in tasks.load_test_set(task)[:4]]


# --------------------------------------------------------------------------------------------------
# traces and training
# --------------------------------------------------------------------------------------------------
def test_training_prompts_come_from_the_training_split_only(prompts):
    test = {e.prompt for task in tasks.TASKS for e in tasks.load_test_set(task)}
    assert len(prompts) == 12 and len(set(prompts)) == 12
    assert not test & set(prompts)


@pytest.mark.parametrize("source", ["tiny", "random"])
def test_egp_traces_end_exactly_at_the_static_output(tiny, prompts, source):
    model = tiny if source == "tiny" else random_model("llada", 3)
    batch = prompts if source == "tiny" else random_prompts(model, 5, 4)
    traces = collect_traces(model, batch, gen_length=32, block_length=16, batch_size=5)
    assert traces.egp_outputs == traces.references
    static = dllm.generate(model, batch, sampler="static", gen_length=32, block_length=16)
    assert traces.references == static.sequences
    assert traces.features.shape[1] == 16 and traces.labels.shape == traces.features.shape
    assert set(traces.prompt.tolist()) == set(range(len(batch)))
    if source == "random":  # several steps per block: decoded slots are labelled too
        assert bool((~traces.masked).any())
    assert sum(traces.egp_nfe) <= sum(traces.static_nfe)


def test_the_stuck_rule_fills_the_block_with_the_reference():
    model = random_model("llada", 1)  # random weights: the EGP oracle gets stuck
    batch = random_prompts(model, 4, 6)
    static = dllm.generate(model, batch, sampler="static", gen_length=16, block_length=8, eos_ids=())
    labeler = EgpLabeler(targets=static.sequences)
    egp = dllm.generate(model, batch, sampler=labeler, gen_length=16, block_length=8, eos_ids=(),
                        return_trajectory=True)
    assert egp.sequences == static.sequences
    stuck = [r for r in labeler.records if r is not None and max(r.weight) == 2]
    assert stuck, "expected a stuck step on a random model"
    assert egp.stats.nfe <= 2 * 8  # at most two forwards per block: a stuck step fills the block


def test_same_seed_same_filter_bytes(tiny, prompts, tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for out, seed in ((a, 0), (b, 0), (c, 1)):
        settings = FitSettings(max_iterations=200, eval_every=25, patience=100, seed=seed)
        train_filter(tiny, prompts[:6], out, settings=settings, progress=False, log=lambda *_: None)
    assert (a / "filter.safetensors").read_bytes() == (b / "filter.safetensors").read_bytes()
    assert (a / "filter.json").read_bytes() == (b / "filter.json").read_bytes()
    assert (a / "filter.safetensors").read_bytes() != (c / "filter.safetensors").read_bytes()
    assert sorted(p.name for p in a.iterdir()) == ["filter.json", "filter.safetensors"]


def test_filter_metadata(trained):
    meta = json.loads((trained / "filter.json").read_text())
    assert meta["model"] == "tiny" and meta["block_length"] == 16 and meta["confidence"] == "prob"
    assert meta["parameters"] == 16 * 32 + 32 + 32 * 16 + 16
    assert meta["training"]["split"] == "by prompt" and meta["training"]["prompts"] == 12
    assert set(meta["validation"]["alpha"]) >= {"0.9", "0.96", "oracle_accept_rate"}
    assert "false_positive_rate" in meta["validation"]["alpha"]["0.96"] and "loss" in meta["validation"]
    assert load_filter(trained).meta == meta


# --------------------------------------------------------------------------------------------------
# the sampler
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_alpha_one_is_static_decoding(tiny, trained, test_prompts, cache):
    static = dllm.generate(tiny, test_prompts, sampler="static", cache=cache, steps=16)
    never = dllm.generate(tiny, test_prompts, sampler="learn2pd", alpha=1.0, filter=str(trained), cache=cache, steps=16)
    assert never.canvases == static.canvases and never.stats.nfe == static.stats.nfe
    assert never.stats.row_nfe == static.stats.row_nfe

    @dataclass
    class Above(Learn2PD):  # alpha > 1 is refused by validate(); the rule itself must still be static decoding
        def validate(self):
            pass

    above = dllm.generate(tiny, test_prompts, sampler=Above(alpha=1.5, filter=str(trained)), cache=cache, steps=16)
    assert above.canvases == static.canvases and above.stats.nfe == static.stats.nfe


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_learn2pd_decodes_in_parallel_with_every_cache(tiny, trained, test_prompts, cache):
    static = dllm.generate(tiny, test_prompts, sampler="static", cache=cache)
    fast = dllm.generate(tiny, test_prompts, sampler="learn2pd", filter=str(trained), cache=cache)
    assert fast.stats.nfe < static.stats.nfe
    assert sum(a == b for a, b in zip(fast.texts, static.texts)) >= len(test_prompts) - 1
    alone = dllm.generate(tiny, test_prompts[:1], sampler="learn2pd", filter=str(trained), cache=cache)
    assert alone.canvases[0] == fast.canvases[0]  # batched, and the batch changes nothing


def test_the_filter_is_found_beside_the_model(tiny, trained, tmp_path):
    copy = tmp_path / "ckpt"
    shutil.copytree(tiny.path, copy, ignore=shutil.ignore_patterns("filter.*"))
    model = dllm.load(copy, device="cpu")
    one_line_error(FilterError, lambda: dllm.generate(model, ["Sort: 3 1 2\n"], sampler="learn2pd"),
                   "no filter file", "dllm train-filter")
    shutil.copy(trained / "filter.safetensors", copy / "filter.safetensors")
    out = dllm.generate(model, ["Sort: 3 1 2\n"], sampler="learn2pd")
    assert out.texts == dllm.generate(model, ["Sort: 3 1 2\n"], sampler="learn2pd", filter=str(trained)).texts


def test_the_shipped_tiny_filter_loads(tiny):
    out = dllm.generate(tiny, ["Sort: 3 1 2\n"], sampler="learn2pd")
    assert out.texts == ["1 2 3"] and out.stats.nfe < 16


def test_block_causal_model_with_its_own_filter(tmp_path):
    model = random_model("sdar", 7)
    batch = random_prompts(model, 4, 8)
    block = model.block_size
    train_filter(model, batch, tmp_path, gen_length=2 * block, settings=QUICK, progress=False, log=lambda *_: None)
    static = dllm.generate(model, batch, sampler="static", gen_length=2 * block, eos_ids=())
    never = dllm.generate(model, batch, sampler="learn2pd", alpha=1.0, filter=str(tmp_path), gen_length=2 * block,
                          eos_ids=())
    assert never.canvases == static.canvases and never.stats.nfe == static.stats.nfe
    dllm.generate(model, batch, sampler="learn2pd", filter=str(tmp_path), gen_length=2 * block, eotp="committed")


def test_bad_filters_and_alphas_are_refused(tiny, trained, tmp_path):
    for alpha in (0, -0.5, 1.01):
        one_line_error(ValueError, lambda: dllm.samplers.build("learn2pd", {"alpha": alpha, "filter": str(trained)}),
                       "alpha must be in (0, 1]")
    one_line_error(FilterError, lambda: dllm.samplers.build("learn2pd", {"filter": str(tmp_path / "none")}),
                   "no filter file")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    one_line_error(FilterError, lambda: load_filter(corrupt), "corrupt")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes((trained / "filter.safetensors").read_bytes()[:-7])
    one_line_error(FilterError, lambda: load_filter(truncated), "corrupt")
    one_line_error(FilterError, lambda: load_filter(tiny.path / "model.safetensors"), "not a learn2pd filter")
    prompt = ["Sort: 3 1 2\n"]
    one_line_error(FilterError, lambda: dllm.generate(tiny, prompt, sampler="learn2pd", filter=str(trained),
                                                      block_length=8), "block length 16", "blocks of 8")
    one_line_error(FilterError, lambda: dllm.generate(tiny, prompt, sampler="learn2pd", filter=str(trained),
                                                      confidence="entropy"), "'prob'", "'entropy'")
    other = random_model("llada", 1)
    one_line_error(FilterError, lambda: dllm.generate(other, random_prompts(other, 1, 2), sampler="learn2pd",
                                                      filter=str(trained), gen_length=32, block_length=16),
                   "trained for model 'tiny'")


def test_train_filter_command_errors_write_nothing(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    cases = [(["--model", "tiny", "--prompts", str(empty)], "no training prompts"),
             (["--model", "tiny", "--tasks", "gsm8k"], "no training split"),
             (["--model", "tiny"], "no training prompts"),
             (["--model", "tiny", "--tasks", "sort", "--limit", "0"], "--limit"),
             (["--model", "tiny", "--tasks", "sort", "--cache", "duall"], "unknown cache 'duall'")]
    for argv, fragment in cases:
        out = tmp_path / "out"
        assert train_filter_main(argv + ["--out", str(out), "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert fragment in err and "\n" not in err, err
        assert not out.exists()
    afile = tmp_path / "afile"
    afile.write_text("x")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "Sort: 3 1 2"}\n')
    assert train_filter_main(["--model", "tiny", "--prompts", str(prompts), "--out", str(afile), "--quiet"]) == 2
    assert "is a file" in capsys.readouterr().err and afile.read_text() == "x"


def test_train_filter_command_from_a_prompts_file(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("Sort: 3 1 2\nSort: 9 4 7 1\nSolve: a=4, b=a*2. What is b?\n")
    out = tmp_path / "out"
    assert train_filter_main(["--model", "tiny", "--prompts", str(prompts), "--out", str(out), "--quiet",
                              "--max-iterations", "100", "--threads", "1", "--cache", "dual"]) == 0
    meta = json.loads((out / "filter.json").read_text())
    assert meta["training"]["prompts"] == 3 and meta["training"]["prompts_file"] == "p.txt"
    assert "(cache dual)" in meta["training"]["traces"]
    assert sorted(p.name for p in out.iterdir()) == ["filter.json", "filter.safetensors"]


# --------------------------------------------------------------------------------------------------
# End-of-Text prediction
# --------------------------------------------------------------------------------------------------
class Spy(Static):
    """Static decoding that records each step's candidate columns per caller row."""

    def start(self, engine):
        self.steps = []

    def select(self, view):
        self.steps.append({int(r): set((view.columns()[m]).tolist()) for r, m in zip(view.rows, view.masked)})
        return super().select(view)


@pytest.mark.parametrize("cache", ["none", "dual"])
def test_eotp_committed_cuts_after_the_first_eos(tiny, test_prompts, cache):
    eos = tiny.eos_ids[0]
    plain = dllm.generate(tiny, test_prompts, sampler="static", cache=cache)
    spy = Spy()
    cut = dllm.generate(tiny, test_prompts, sampler=spy, cache=cache, eotp="committed", return_trajectory=True)
    assert cut.texts == plain.texts  # tiny's EOS lands where it did without EoTP
    assert cut.stats.nfe < plain.stats.nfe
    pads = cut.trajectory.pads
    for row, canvas in enumerate(cut.canvases):
        gen = canvas[-32:]
        first = gen.index(eos)
        assert all(t == eos for t in gen[first:])
        column = pads[row] + len(canvas) - 32 + first  # canvas column of the first EOS
        landed = next(i for i, s in enumerate(cut.trajectory.steps)
                      if any(p == column - pads[row] and t == eos for p, t in s.commits[row]))
        later = [c for step in spy.steps[landed + 1:] for c in step.get(row, ())]
        assert all(c < column for c in later), (row, column, later)


def test_eotp_keeps_the_oracle_exact(tiny, test_prompts):
    static = dllm.generate(tiny, test_prompts, sampler="static")
    for mode in ("committed", "predicted"):
        out = dllm.generate(tiny, test_prompts, sampler="oracle", targets=static.sequences, eotp=mode)
        assert out.sequences == static.sequences


def _view(x0, masked, conf, eos=1):
    w = len(x0)
    return StepView(logits=None, x0=torch.tensor([x0]), confidence=torch.tensor([conf]), masked=torch.tensor([masked]),
                    span=(10, 10 + w), step=0, steps_per_span=None, canvas=torch.zeros(1, 30, dtype=torch.long),
                    rows=torch.arange(1), raw_confidence=torch.tensor([conf]), eos_ids=torch.tensor([eos]),
                    gen_start=torch.tensor([10]), end=torch.tensor([30]), mask_id=2)


def test_eotp_modes_on_one_step():
    x0 = [5, 6, 1, 7, 8, 1, 9]
    masked = [True] * 7
    conf = [0.9, 0.2, 0.3, 0.4, 0.5, 0.8, 0.6]
    for mode in ("committed", "predicted"):
        f = Eotp(mode=mode)
        f.start(None)
        # an EOS committed at column 13 cuts after it; commits past it are dropped
        d = f.adjust(_view([5, 6, 7, 1, 8, 9, 4], masked, conf), Decision(torch.tensor([[1, 0, 0, 1, 0, 0, 1]]).bool(),
                                                                          torch.tensor([[5, 6, 7, 1, 8, 9, 4]])))
        assert d.end.tolist() == [14] and d.commit.tolist() == [[True, False, False, True, False, False, False]]
    committed, predicted = Eotp(mode="committed"), Eotp(mode="predicted")
    committed.start(None)
    predicted.start(None)
    commit = torch.tensor([[True, False, False, False, False, False, True]])
    d = committed.adjust(_view(x0, masked, conf), Decision(commit.clone(), torch.tensor([x0])))
    assert d.end.tolist() == [30] and d.commit.tolist() == commit.tolist()  # nothing committed is an EOS
    d = predicted.adjust(_view(x0, masked, conf), Decision(commit.clone(), torch.tensor([x0])))
    assert d.end.tolist() == [16]  # after the most confident predicted EOS (column 15, confidence 0.8)
    assert d.commit.tolist() == [[True, False, False, False, False, False, False]]
    one_line_error(ValueError, lambda: dllm.filters.build("eotp", {"mode": "sometimes"}), "committed", "predicted", "fill")
    one_line_error(ValueError, lambda: dllm.generate(dllm.load("tiny"), ["Sort: 1\n"], eotp="always"), "mode")


def test_eotp_fill_writes_the_rest_of_the_block_as_eos_without_cutting():
    fill = Eotp(mode="fill")
    fill.start(None)
    x0 = [5, 6, 7, 1, 8, 9, 4]
    commit = torch.tensor([[True, False, False, True, False, False, False]])
    masked = [True, True, True, True, True, False, True]  # column 15 is not a candidate (already decided)
    d = fill.adjust(_view(x0, masked, [0.5] * 7), Decision(commit.clone(), torch.tensor([x0])))
    assert d.end is None  # nothing is cut: the tail stays in attention
    assert d.commit.tolist() == [[True, False, False, True, True, False, True]]
    assert d.tokens.tolist() == [[5, 6, 7, 1, 1, 9, 1]]
    # an EOS that landed in an earlier step (column 11 of the canvas) fills every later candidate of this block
    view = _view(x0, [False, False, True, True, True, True, True], [0.5] * 7)
    view.canvas[0, 11] = 1
    d = fill.adjust(view, Decision(torch.zeros(1, 7, dtype=torch.bool), torch.tensor([x0])))
    assert d.commit.tolist() == [[False, False, True, True, True, True, True]] and d.tokens[0, 2:].tolist() == [1] * 5


@pytest.mark.parametrize("cache", ["none", "dual"])
def test_eotp_fill_keeps_every_cell_after_the_first_eos_an_eos(tiny, test_prompts, cache):
    plain = dllm.generate(tiny, test_prompts, sampler="static", cache=cache)
    out = dllm.generate(tiny, test_prompts, sampler="static", cache=cache, eotp="fill")
    assert out.texts == plain.texts and out.stats.nfe <= plain.stats.nfe
    eos, block = tiny.eos_ids[0], 16  # tiny's canvas: 32 cells in blocks of 16
    for canvas in out.canvases:
        gen = canvas[-32:]
        first = gen.index(eos)
        block_end = (first // block + 1) * block
        assert all(t == eos for t in gen[first:block_end])  # the rest of the block was written as EOS
        assert all(t in (eos, tiny.mask_id) for t in gen[block_end:])  # later blocks: EOS, or never decoded


def test_learn2pd_with_eotp(tiny, trained, test_prompts):
    plain = dllm.generate(tiny, test_prompts, sampler="learn2pd", filter=str(trained))
    for mode in ("committed", "predicted", "fill"):
        out = dllm.generate(tiny, test_prompts, sampler="learn2pd", filter=str(trained), eotp=mode)
        assert out.stats.nfe <= plain.stats.nfe
        assert sum(a == b for a, b in zip(out.texts, plain.texts)) >= len(test_prompts) - 1
