"""Grammar-constrained generation end to end: the ``grammar`` filter, templates and schema scaffolds, errors."""

import json

import jsonschema
import pytest
import torch

import dllm
from dllm.grammars import load_grammar
from dllm.filters import base as filter_base
from dllm.filters.scaffold import ScaffoldFilter
from dllm.grammars.scaffold import OpenSlot, parse_template, schema_pieces, slot_complete

from helpers import one_line_error, random_model, random_prompts

SCHEMA = {"type": "object", "properties": {"id": {"type": "integer", "minimum": 0, "maximum": 99},
                                           "ok": {"type": "boolean"}, "tag": {"enum": ["a", "b"]}},
          "required": ["id"]}


def check_outputs(out, grammar, schema=None):
    """Finished rows parse (lark and json.loads) and validate; stuck rows carry a witness that does."""
    finished = 0
    for row, (text, status) in enumerate(zip(out.texts, out.status)):
        if status == "stuck":
            text = out.stats.witnesses[row]
            assert "witnesses" in out.stats.reasons[row]
        else:
            finished += 1
        assert grammar.parses(text), (status, text)
        value = json.loads(text)
        if schema is not None:
            jsonschema.validate(value, schema)
    return finished


CASES = [("llada", "none", "static", {}), ("llada", "prefix", "threshold", {"threshold": 0.5}),
         ("llada", "dual", "localleap", {}), ("dream", "none", "threshold", {"threshold": 0.0}),
         ("sdar", "block", "threshold", {"threshold": 0.3}), ("fast_dllm_v2", "block", "static", {}),
         ("llada", "none", "threshold", {"threshold": 0.0, "conflict_waits": False}),
         ("llada", "none", "threshold", {"threshold": 0.0, "check_order": "position", "forced_alone": True}),
         ("dream", "dual", "threshold", {"threshold": 0.2, "check_order": "position"}),
         ("llada", "none", "threshold", {"threshold": 0.0, "batch_vetoes": False}),
         ("llada", "dual", "threshold", {"threshold": 0.0, "complete_after": 1}),
         ("dream", "none", "static", {"complete_after": 2})]


@pytest.mark.parametrize("family,cache,sampler,options", CASES)
def test_every_finished_output_parses(family, cache, sampler, options):
    model = random_model(family, 21)
    prompts = random_prompts(model, 3, 22)
    block = 8 if model.attention == "full" else None
    out = dllm.generate(model, prompts, sampler=sampler, cache=cache, gen_length=16, block_length=block,
                        grammar="json", max_rejections=4000, **options)
    assert check_outputs(out, load_grammar("json")) >= 1
    assert len(out.stats.counters["grammar_checks"]) == 3


@pytest.mark.parametrize("family,cache", [("llada", "dual"), ("sdar", "block")])
def test_schema_constraint_outputs_validate(family, cache):
    model = random_model(family, 23)
    prompts = random_prompts(model, 2, 24)
    block = 8 if model.attention == "full" else None
    out = dllm.generate(model, prompts, sampler="threshold", threshold=0.4, cache=cache, gen_length=24,
                        block_length=block, grammar=SCHEMA, max_rejections=4000)
    check_outputs(out, load_grammar(SCHEMA), SCHEMA)


@pytest.mark.parametrize("family", ["llada", "sdar"])
def test_template_keeps_its_text_and_counts_only_generated_tokens(family):
    model = random_model(family, 25)
    prompts = random_prompts(model, 2, 26)
    template = '{"a": <mask:4>, "b": [<mask:5>]}'
    out = dllm.generate(model, prompts, sampler="threshold", threshold=0.5, template=template, grammar="json",
                        max_rejections=4000)
    check_outputs(out, load_grammar("json"))
    fixed = len(model.tokenizer.encode('{"a": , "b": []}', add_special_tokens=False))
    for row, text in enumerate(out.texts):
        if out.status[row] != "stuck":
            assert text.startswith('{"a": ') and text.endswith("]}") and '"b": [' in text
            assert out.stats.row_tokens[row] == len(out.sequences[row]) - fixed
    # without a grammar the template still holds (no EOS can cut it off)
    plain = dllm.generate(model, prompts, template=template)
    assert all(t.startswith('{"a": ') and t.endswith("]}") for t in plain.texts)


def test_schema_scaffold_on_the_tiny_model():
    model = dllm.load("tiny")
    from dllm.tiny.tasks import load_test_set

    examples = load_test_set("json")[:3]
    for example in examples:
        record = json.loads(example.target)
        schema = {"type": "object", "required": list(record),
                  "properties": {k: {"type": "integer" if isinstance(v, int) else "string"} for k, v in record.items()}}
        for threshold in (0.9, 0.0):
            out = dllm.generate(model, [example.prompt], sampler="threshold", threshold=threshold, schema=schema,
                                slot_length={"string": 3, "integer": 2})
            jsonschema.validate(json.loads(out.texts[0]), schema)
            assert json.loads(out.texts[0]) == record
            assert out.stats.tokens < len(out.sequences[0])  # keys are fixed text, not generated


def test_schema_pieces_and_template_parsing():
    assert parse_template('{"a": <mask:3>, "b": <mask>}') == ['{"a": ', 3, ', "b": ', 1, "}"]
    assert schema_pieces({"type": "object", "properties": {"a": {"type": "string"}, "b": {"const": 1}}}) == \
        ['{"a":', 5, ' "b":1}']
    assert schema_pieces(SCHEMA, slot_length={"id": 2, "boolean": 3}) == ['{"id":', 2, ' "ok":', 3, ' "tag":', 2]
    assert schema_pieces({"type": "integer"}, slot_length=4) == [4]


NESTED = {"type": "object", "required": ["name", "address", "kids"],
          "properties": {"name": {"type": "string"},
                         "address": {"type": "object", "required": ["n", "s"],
                                     "properties": {"n": {"type": "integer"}, "s": {"type": "string"}}},
                         "kids": {"type": "integer"}}}


def test_open_slots_hold_the_structure_after_their_value():
    assert schema_pieces(NESTED, "model") == ['{"name":', OpenSlot(","), ' "address": {"n":', OpenSlot(","), ' "s":',
                                              OpenSlot("},"), ' "kids":', OpenSlot("}")]
    assert schema_pieces({"type": "object", "properties": {"a": {"type": "string"}, "b": {"const": 1}}}, "model") == \
        ['{"a":', OpenSlot(","), ' "b":1}']
    assert schema_pieces({"type": "integer"}, "model") == [OpenSlot("")]
    assert schema_pieces(NESTED) == schema_pieces(NESTED, "schema")  # fixed lengths unchanged
    complete = [(b' "Ben",', ","), (b" 190 ,", ","), (b' "P"},', "},"), (b' [1, "a,"],', ","), (b' {"a": 1}}', "}"),
                (b' "a\\\\",', ",")]  # an escaped backslash, then the closing quote
    incomplete = [(b' "a,', ","), (b" 19", ","), (b' "P"}', "},"), (b' [1,', ","), (b",", ","),
                  (b' "a\\",', ","),  # an escaped quote
                  (b' "a",', "},"), (b' "a",', ""), (b' "a",', ",,")]
    assert all(slot_complete(text, closer) for text, closer in complete)
    assert not any(slot_complete(text, closer) for text, closer in incomplete)


def test_the_open_scaffold_walk():
    model = dllm.load("tiny")
    flt = ScaffoldFilter(pieces=schema_pieces({"type": "object", "properties": {
        "name": {"type": "string"}, "age": {"type": "integer"}}}, "model"))
    flt.attach(model)
    enc = lambda text: model.tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    first, key, value = enc('{"name":'), enc(' "age":'), enc(' "Bo",')
    mask = model.mask_id
    region = first + value + [mask] * (len(key) + 3)
    at = len(first) + len(value)
    assert flt.pending(flt._items[0], region) == ([(at + i, t) for i, t in enumerate(key)], False)
    assert flt.pending(flt._items[0], first + value[:-1] + [mask] * 8) == ([], False)  # the value is not closed yet
    assert flt.pending(flt._items[0], first + value + key[:1] + [mask] * 8) == \
        ([(at + i, t) for i, t in enumerate(key) if i], False)
    wrong = enc(' "x":')
    assert flt.pending(flt._items[0], first + value + wrong + [mask] * 4)[1] is True  # derailed


def test_open_scaffold_on_the_tiny_models():
    """tiny writes whole answers in a step or two, keys included (nothing left to write); tiny-cot's row 3 leaves
    three key cells to the scaffold, with and without a cache."""
    from dllm.tiny.tasks import load_test_set

    cases = [("tiny", "json", i, {"sampler": "threshold", "threshold": t}) for i in range(3) for t in (0.9, 0.0)]
    cases += [("tiny-cot", "cot_json", 3, {"sampler": "threshold", "threshold": 0.9, "cache": c})
              for c in ("none", "dual")]
    written = 0
    for name, task, index, options in cases:
        model = dllm.load(name)
        example = load_test_set(task)[index]
        record = json.loads(example.target)
        schema = _schema_of(record)
        out = dllm.generate(model, [example.prompt], schema=schema, **options)
        assert json.loads(out.texts[0]) == record
        cells = out.stats.counters["scaffold_cells"][0]
        assert out.stats.counters["scaffold_derailed"] == [0]
        first = len(model.tokenizer.encode(schema_pieces(schema, "model")[0], add_special_tokens=False))
        assert out.stats.tokens == len(out.sequences[0]) - first - cells  # keys are fixed text, not model output
        written += cells if name == "tiny-cot" else 0
    assert written == 6


@pytest.mark.parametrize("family,cache,sampler", [("llada", "dual", "threshold"), ("dream", "none", "static"),
                                                  ("sdar", "block", "threshold")])
def test_open_scaffold_outputs_validate(family, cache, sampler):
    model = random_model(family, 41)  # a character tokenizer and a context of 64: short keys
    schema = {"type": "object", "required": ["a", "b", "d"],
              "properties": {"a": {"type": "string"}, "b": {"type": "object", "required": ["c"],
                                                            "properties": {"c": {"type": "integer"}}},
                             "d": {"type": "integer"}}}
    prompts = random_prompts(model, 3, 42, high=12)
    block = 8 if model.attention == "full" else None
    out = dllm.generate(model, prompts, sampler=sampler, cache=cache, gen_length=48, block_length=block,
                        schema=schema, max_rejections=4000)
    assert check_outputs(out, load_grammar(schema), schema) >= 1
    first = len(model.tokenizer.encode('{"a":', add_special_tokens=False))
    for row, status in enumerate(out.status):
        if status != "stuck":
            assert out.texts[row].startswith('{"a":')
            cells = out.stats.counters["scaffold_cells"][row]
            assert out.stats.row_tokens[row] == len(out.sequences[row]) - first - cells


@filter_base.register("test_ban_key")
class _BanKey(filter_base.Filter):
    """Vetoes one token everywhere (tests: the scaffold's key token must give way)."""

    token: int = -1

    def reject(self, view, decision):
        return decision.commit & (decision.tokens == self.token)


def test_a_banned_key_token_derails_the_open_scaffold():
    model = dllm.load("tiny")
    from dllm.tiny.tasks import load_test_set

    example = load_test_set("json")[0]
    record = json.loads(example.target)
    key = list(record)[1]
    schema = {"type": "object", "required": list(record),
              "properties": {k: {"type": "integer" if isinstance(v, int) else "string"} for k, v in record.items()}}
    banned = filter_base.build("test_ban_key")
    banned.token = model.tokenizer.encode(key, add_special_tokens=False)[0]
    out = dllm.generate(model, [example.prompt], sampler="threshold", threshold=0.9, schema=schema,
                        filters=[banned], max_rejections=4000)
    assert out.stats.counters["scaffold_derailed"] == [1]
    check_outputs(out, load_grammar(schema), schema)


def test_one_schema_per_prompt_in_one_batch():
    from dllm.filters.grammar import _ORACLES, build_oracles
    from dllm.tiny.tasks import load_test_set

    model = dllm.load("tiny-cot")
    examples = load_test_set("cot_json")[:4]
    schemas = [_schema_of(json.loads(e.target)) for e in examples]
    prompts = [e.prompt for e in examples]
    oracles = build_oracles(model, schemas)  # ahead of the requests: generate finds them
    assert len(oracles) == 4 and all(o._template is not None for o in oracles)
    built = len(_ORACLES)
    dllm.generate(model, prompts, sampler="threshold", threshold=0.9, schema=schemas)
    assert len(_ORACLES) == built
    for options in ({"schema": schemas}, {"grammar": schemas}):
        out = dllm.generate(model, prompts, sampler="threshold", threshold=0.9, **options)
        for text, schema, status in zip(out.texts, schemas, out.status):
            assert status == "eos"
            jsonschema.validate(json.loads(text), schema)
            assert list(json.loads(text)) == list(schema["properties"])  # each row its own keys, in order
    cached = len(_ORACLES)
    dllm.generate(model, prompts[:2], sampler="threshold", threshold=0.9, schema=schemas[:2])
    assert len(_ORACLES) == cached  # built once per grammar and process
    one_line_error(ValueError, lambda: dllm.stream(model, prompts, schema=schemas[:3]), "3 schemas for 4 prompts")
    one_line_error(ValueError, lambda: dllm.stream(model, prompts, grammar=schemas[:2]), "2 grammars for 4 prompts")


def test_stuck_rows_get_a_witness():
    model = random_model("llada", 27)
    prompts = random_prompts(model, 2, 28)
    out = dllm.generate(model, prompts, gen_length=16, block_length=8, grammar="json", max_rejections=0)
    assert "stuck" in out.status
    check_outputs(out, load_grammar("json"))


def test_the_filter_by_name():
    model = random_model("llada", 29)
    prompts = random_prompts(model, 2, 30)
    out = dllm.generate(model, prompts, gen_length=8, block_length=8, filters=["grammar"], max_rejections=4000)
    check_outputs(out, load_grammar("json"))


def test_bad_input_errors_come_before_any_forward(tmp_path):
    model = random_model("llada", 31)
    prompts = random_prompts(model, 1, 32)
    calls = []
    network = model.network.forward
    model.network.forward = lambda *a, **k: calls.append(1) or network(*a, **k)
    bad = tmp_path / "bad.lark"
    bad.write_text('start: "a"\nfoo: : "b"\n')
    one_line_error(ValueError, lambda: dllm.stream(model, prompts, grammar=str(bad)), "line 2", "column")
    one_line_error(ValueError, lambda: dllm.stream(model, prompts, grammar="start: a\na: a"), "no string")
    one_line_error(ValueError, lambda: dllm.stream(model, prompts, schema={"type": "string", "pattern": "x"}), "'pattern'")
    one_line_error(ValueError, lambda: dllm.stream(model, prompts, template='] <mask:3>', grammar="json"), "template",
                   "never be completed")
    one_line_error(ValueError, lambda: dllm.stream(model, prompts, template='[<mask:40>]', gen_length=16, block_length=8),
                   "longer than the canvas")
    one_line_error(ValueError, lambda: dllm.stream(model, prompts, schema=SCHEMA, grammar="json"), "not both")
    one_line_error(ValueError, lambda: dllm.stream(model, prompts, slot_length=3), "schema=")
    one_line_error(ValueError, lambda: dllm.stream(model, prompts, defer_eos=True), "defer_eos", "grammar=")
    one_line_error(ValueError, lambda: dllm.stream(model, prompts, exact_cells=2), "exact_cells", "grammar=")
    one_line_error(ValueError, lambda: dllm.stream(model, prompts, grammar="json", exact_cells=-1), "exact_cells", ">= 0")
    one_line_error(ValueError, lambda: dllm.stream(model, prompts, grammar="json", force_after=True), "force_after")
    one_line_error(ValueError, lambda: dllm.stream(model, prompts, grammar="json", conflict_waits="maybe", gen_length=16,
                                                   block_length=8), "conflict_waits must be true or false")
    one_line_error(ValueError, lambda: dllm.stream(model, prompts, conflict_waits=False), "conflict_waits", "grammar=")
    one_line_error(ValueError, lambda: dllm.stream(model, prompts, grammar="json", check_order="random"),
                   "check_order must be 'confidence' or 'position'")
    one_line_error(ValueError, lambda: dllm.stream(model, prompts, grammar="json", forced_alone="maybe"),
                   "forced_alone must be true or false")
    one_line_error(ValueError, lambda: dllm.stream(model, prompts, grammar="json", batch_vetoes="sometimes"),
                   "batch_vetoes must be true or false")
    one_line_error(ValueError, lambda: dllm.stream(model, prompts, grammar="json", complete_after=-1),
                   "complete_after must be an integer >= 0")
    one_line_error(ValueError, lambda: dllm.stream(model, prompts, check_order="position"), "check_order", "grammar=")
    assert calls == []


def _attached_filter(model, region, **options):
    """A grammar filter attached to a one-row canvas whose generated region is ``region`` (token ids)."""
    import types

    from dllm.filters.grammar import GrammarFilter

    canvas = types.SimpleNamespace(x=torch.tensor([region]), gen_start=torch.tensor([0]),
                                   gen_end=torch.tensor([len(region)]))
    grammar_filter = GrammarFilter(grammar="json", **options)
    grammar_filter.attach(model, canvas, model.eos_ids)
    return grammar_filter


def test_an_eos_waits_until_the_cells_before_it_are_filled():
    model = dllm.load("tiny")
    eos, mask = model.eos_ids[0], model.mask_id
    text = model.tokenizer.encode('{"a": 12', add_special_tokens=False)
    close = model.tokenizer.encode("}", add_special_tokens=False)
    assert len(close) == 1  # one cell closes the JSON: the EOS must not take it
    region = text + [mask, mask, mask]
    last, tail = len(text), len(text) + 1
    deferring = _attached_filter(model, region, defer_eos=True)
    # EOS first in confidence order, then the closing token before it: the EOS waits, then lands in the same step
    assert deferring._check_row(0, [(tail, eos), (last, close[0])])[:2] == ([True, True], [False, False])
    assert deferring.deferrals == {0: 0}
    # the EOS alone: deferred (neither kept nor banned), counted
    assert deferring._check_row(0, [(tail, eos)])[:2] == ([False], [False])
    assert deferring.deferrals == {0: 1}
    # without deferral the oracle accepts it: the one cell before it can still hold the "}"
    plain = _attached_filter(model, region)  # the default
    assert plain._check_row(0, [(tail, eos)])[:2] == ([True], [False])
    # one cell cannot hold "]}" (two tokens here): the exact gap rejects that EOS, a length-blind one does not
    nested = model.tokenizer.encode('{"a": [12', add_special_tokens=False)
    assert len(model.tokenizer.encode("]}", add_special_tokens=False)) == 2
    region = nested + [mask, mask, mask]
    tail = len(nested) + 1
    assert _attached_filter(model, region)._check_row(0, [(tail, eos)])[:2] == ([False], [True])
    assert _attached_filter(model, region, exact_cells=0)._check_row(0, [(tail, eos)])[:2] == ([True], [False])


def test_deferred_eos_rows_still_progress_and_parse():
    model = dllm.load("tiny")
    prompt = "To JSON: The box weighs 12 kg, is painted black and is built from copper.\n"
    for sampler, options in (("static", {}), ("threshold", {"threshold": 0.0})):
        out = dllm.generate(model, [prompt], sampler=sampler, grammar="json", defer_eos=True, **options)
        assert out.status == ["eos"] and json.loads(out.texts[0])["item"] == "box"
    assert out.stats.counters["grammar_deferrals"] == [0]  # a whole block per step: the EOS lands with the text
    deferred = dllm.generate(model, [prompt], sampler="static", grammar="json", defer_eos=True)
    assert deferred.stats.counters["grammar_deferrals"][0] > 0
    assert dllm.generate(model, [prompt], sampler="static", grammar="json").stats.counters["grammar_deferrals"] == [0]


@pytest.mark.parametrize("family,cache,sampler,options", CASES[:2] + CASES[3:5])
def test_deferred_eos_keeps_every_finished_output_parseable(family, cache, sampler, options):
    model = random_model(family, 33)
    prompts = random_prompts(model, 3, 34)
    block = 8 if model.attention == "full" else None
    out = dllm.generate(model, prompts, sampler=sampler, cache=cache, gen_length=16, block_length=block,
                        grammar="json", defer_eos=True, max_rejections=4000, **options)
    assert check_outputs(out, load_grammar("json")) >= 1


def test_a_ban_rescores_only_the_banned_positions(monkeypatch):
    """After a rejection the engine scores again only the banned positions: their proposal becomes the best
    allowed token, and every other position keeps its proposal and confidence."""
    from dllm.engine.loop import Engine

    original, calls = Engine._rescore, []

    def checked(self, view, where):
        x0, confidence = view.x0.clone(), view.confidence.clone()
        original(self, view, where)
        changed = torch.zeros_like(view.masked)
        changed[where[:, 0], where[:, 1]] = True
        assert torch.equal(view.x0[~changed], x0[~changed])
        assert torch.equal(view.confidence[~changed], confidence[~changed])
        best = view.logits[where[:, 0], where[:, 1]].argmax(-1)
        assert torch.equal(view.x0[where[:, 0], where[:, 1]], best)
        calls.append(len(where))

    monkeypatch.setattr(Engine, "_rescore", checked)
    model = random_model("llada", 35)
    out = dllm.generate(model, random_prompts(model, 3, 36), sampler="threshold", threshold=0.3, gen_length=16,
                        block_length=8, grammar="json", max_rejections=4000)
    check_outputs(out, load_grammar("json"))
    assert calls  # random logits get rejected


def test_bans_with_sampling_and_a_modifier_keep_outputs_parseable_and_seeded():
    model = random_model("llada", 37)
    prompts = random_prompts(model, 2, 38)
    run = lambda: dllm.generate(model, prompts, sampler="static", temperature=0.8, seed=5, gen_length=16,
                                block_length=16, schedule="ascending", modifiers=["eoser"], grammar="json",
                                max_rejections=4000)
    first, second = run(), run()
    check_outputs(first, load_grammar("json"))
    assert first.texts == second.texts


def test_a_cell_with_every_token_banned_ends_its_row_as_stuck():
    """With a rejection budget larger than the vocabulary the grammar can ban every token of one cell (here
    two tiny-cot JSON rows at threshold 0, with length-blind gaps, no frontier, one veto per re-selection and no
    completion of derailed rows). The next
    step must call such a row stuck, not mistake that cell's all -inf logits for a broken model (it raised "non-finite
    logits" before)."""
    from dllm.tiny.tasks import load_test_set

    model = dllm.load("tiny-cot")
    examples = load_test_set("cot_json")
    out = dllm.generate(model, [examples[12].prompt, examples[21].prompt], sampler="threshold", threshold=0.0,
                        grammar="json", max_rejections=1000, exact_cells=0, frontier=False, batch_vetoes=False,
                        complete_after=0)
    assert out.status == ["stuck", "stuck"]
    check_outputs(out, load_grammar("json"))


def test_a_cell_rejected_force_after_times_takes_the_witness_token():
    """Between '[12' and '}' only a closing bracket fits; after ``force_after`` rejections at that cell the
    filter lands the witness's token there instead of vetoing again."""
    model = dllm.load("tiny")
    eos, mask = model.eos_ids[0], model.mask_id
    enc = lambda s: model.tokenizer.encode(s, add_special_tokens=False)
    region = enc('{"a": [12') + [mask] + enc("}") + [eos]
    cell = len(enc('{"a": [12'))
    grammar_filter = _attached_filter(model, region, force_after=2)
    comma, five = enc(",")[0], enc("5")[0]
    assert grammar_filter._check_row(0, [(cell, comma)]) == ([False], [True], [comma])
    kept, vetoed, landing = grammar_filter._check_row(0, [(cell, five)])
    assert kept == [True] and vetoed == [False] and landing[0] != five
    assert model.tokenizer.decode(landing) .strip() == "]"
    assert grammar_filter.forced == {0: 1}
    never = _attached_filter(model, region, force_after=0)
    for token in (comma, five, comma):
        assert never._check_row(0, [(cell, token)])[:2] == ([False], [True])


def test_a_forced_cell_lands_with_the_commits_that_fit_after_it():
    """``forced_alone=False`` (default): the step's other commits are checked after the forced token and land with it;
    one that fails waits (no veto, which would send the forced cell back with the row). ``forced_alone=True``: the
    forced cell lands alone."""
    from dllm.filters.grammar import VETO_ROUNDS

    model = dllm.load("tiny")
    eos, mask = model.eos_ids[0], model.mask_id
    enc = lambda s: model.tokenizer.encode(s, add_special_tokens=False)
    region = enc('{"a": [12') + [mask, mask, eos]
    cell = len(enc('{"a": [12'))
    comma, five, close, bracket = enc(",")[0], enc("5")[0], enc("}")[0], enc("]")[0]
    for forced_alone, kept_after in ((False, True), (True, False)):
        grammar_filter = _attached_filter(model, region, force_after=2, forced_alone=forced_alone)
        assert grammar_filter._check_row(0, [(cell, comma)])[:2] == ([False], [True])  # no room left to close
        kept, vetoed, landing = grammar_filter._check_row(0, [(cell, five), (cell + 1, close)])
        assert landing[0] == bracket and kept == [True, kept_after] and vetoed == [False, False]
    # a comma right before the end of output can never be completed: behind the forced cell it waits, not vetoed
    grammar_filter = _attached_filter(model, region, force_after=2)
    assert grammar_filter._check_row(0, [(cell, comma)])[:2] == ([False], [True])
    assert grammar_filter._check_row(0, [(cell, five), (cell + 1, comma)]) == ([True, False], [False, False],
                                                                               [bracket, comma])
    # past VETO_ROUNDS vetoes of a row in one step, a veto behind kept commits waits too and the kept ones land
    plain = _attached_filter(model, region)
    assert plain._check_row(0, [(cell, bracket), (cell + 1, comma)])[:2] == ([True, False], [False, True])
    plain._vetoes[0] = VETO_ROUNDS
    assert plain._check_row(0, [(cell, bracket), (cell + 1, comma)])[:2] == ([True, False], [False, False])


def test_a_veto_also_vetoes_the_other_commits_that_fail_alone():
    """``batch_vetoes=True`` (default): when a row's commit is vetoed, its other commits of the step that fail against
    the row's canvas alone are vetoed in the same round (banned at once) instead of one per re-selection."""
    model = dllm.load("tiny")
    eos, mask = model.eos_ids[0], model.mask_id
    enc = lambda s: model.tokenizer.encode(s, add_special_tokens=False)
    parts = [enc('{"a": 12'), enc(', "b": 3'), enc(', "c": 4'), enc("}")]
    region = parts[0] + [mask] + parts[1] + [mask] + parts[2] + [mask] + parts[3] + [eos]
    cells = [len(parts[0]), len(parts[0]) + 1 + len(parts[1]), len(parts[0]) + len(parts[1]) + len(parts[2]) + 2]
    five, colon = enc("5")[0], enc(":")[0]
    pairs = [(cells[0], five), (cells[1], colon), (cells[2], colon)]
    for batch_vetoes, vetoes in ((True, [False, True, True]), (False, [False, True, False])):
        grammar_filter = _attached_filter(model, region, batch_vetoes=batch_vetoes)
        kept, vetoed, _ = grammar_filter._check_row(0, pairs)
        assert vetoed == vetoes and kept[0]
        assert grammar_filter.states[0].rejections == sum(vetoes)


def test_a_derailed_row_is_finished_by_the_grammar_completion():
    """``complete_after``: once a row has collected that many rejections, its remaining cells take one completion of
    its canvas (the grammar's text), so it stops costing forwards; the output parses and validates, and the row's
    counter and reason say so. Two tiny-cot rows the model derails on at threshold 0.5 (schema grammar)."""
    from dllm.tiny.tasks import load_test_set

    model = dllm.load("tiny-cot")
    examples = [load_test_set("cot_json")[i] for i in (34, 44)]
    schemas = [_schema_of(json.loads(e.target)) for e in examples]
    run = lambda after: dllm.generate(model, [e.prompt for e in examples], sampler="threshold", threshold=0.5,
                                      grammar=schemas, complete_after=after)
    decoded, completed = run(0), run(8)
    assert decoded.stats.counters["grammar_completed"] == [0, 0]
    assert all(n > 0 for n in completed.stats.counters["grammar_completed"])
    assert all(r >= 8 for r in completed.stats.counters["grammar_rejections"])
    for row in range(2):
        assert completed.status[row] == "eos" and "derailed" in completed.stats.reasons[row]
        jsonschema.validate(json.loads(completed.texts[row]), schemas[row])
        assert completed.stats.row_nfe[row] < decoded.stats.row_nfe[row]


def test_rows_stuck_at_threshold_zero_finish_with_forced_cells():
    """Two tiny-cot JSON rows that ended stuck at threshold 0 (length-blind gaps, budget 100) finish and parse
    with the defaults (token-exact short gaps, forcing after 3 rejections at a cell)."""
    from dllm.tiny.tasks import load_test_set

    model = dllm.load("tiny-cot")
    examples = load_test_set("cot_json")
    prompts = [examples[12].prompt, examples[21].prompt]
    blind = dllm.generate(model, prompts, sampler="threshold", threshold=0.0, grammar="json", exact_cells=0,
                          force_after=0, frontier=False)
    assert blind.status == ["stuck", "stuck"]
    out = dllm.generate(model, prompts, sampler="threshold", threshold=0.0, grammar="json")
    assert out.status == ["eos", "eos"] and sum(out.stats.counters["grammar_forced"]) > 0
    check_outputs(out, load_grammar("json"))
    for text in out.texts:
        json.loads(text)


def _schema_of(value) -> dict:
    """The schema of a reference answer: its keys all required, value types, nested objects and arrays."""
    if isinstance(value, dict):
        return {"type": "object", "required": list(value), "properties": {k: _schema_of(v) for k, v in value.items()}}
    if isinstance(value, list):
        return {"type": "array", "items": _schema_of(value[0]) if value else {}}
    return {"type": "integer" if isinstance(value, int) else "string"}


@pytest.mark.parametrize("row", [44, 49])
def test_frontier_finishes_schema_rows_that_end_stuck_without_it(row):
    """tiny-cot schema rows at threshold 0.5 that end stuck without the frontier (the model closes the object
    early, leaving a long gap too short for the required keys; the length-blind long gap hides it until every
    token is rejected there) finish with the defaults and validate: with the frontier only the last gap is
    long, and its tokens are counted."""
    import jsonschema
    from dllm.tiny.tasks import load_test_set

    model = dllm.load("tiny-cot")
    example = load_test_set("cot_json")[row]
    schema = _schema_of(json.loads(example.target))
    old = dllm.generate(model, [example.prompt], sampler="threshold", threshold=0.5, grammar=schema, frontier=False)
    assert old.status == ["stuck"]
    out = dllm.generate(model, [example.prompt], sampler="threshold", threshold=0.5, grammar=schema)
    assert out.status == ["eos"]
    jsonschema.validate(json.loads(out.texts[0]), schema)
