"""The lm-eval model ``dllm``: model args, batched generate_until, likelihood requests, results JSON, tasks."""

import json

import lm_eval
import pytest
from lm_eval.api.instance import Instance

import dllm
import dllm.eval
from dllm.eval import likelihood
from dllm.eval.lm import DiffusionLM
from dllm.eval.settings import parse_model_args, plan_canvas, resolve_defaults

from conftest import DECODES

PEAKY = DECODES / "llada_peaky"  # LLaDA format, character tokenizer, 64-token context
PROMPTS = ["Sort: 31 12 19\n", "To JSON: Ada is 20.\n", "ab", "Solve: a=1, b=a+2. What is b?\n", "x=7\n", "hello world"]


@pytest.fixture(scope="module")
def model():
    return dllm.load(PEAKY)


def make_lm(model, **args):
    args.setdefault("gen_length", 16)
    args.setdefault("block_length", 8)
    return DiffusionLM(pretrained=model, **args)


def requests(kind, args_list, task="t"):
    return [Instance(request_type=kind, doc={}, arguments=args, idx=0, metadata=(task, i, 1))
            for i, args in enumerate(args_list)]


# --------------------------------------------------------------------------------------------------
# model args
# --------------------------------------------------------------------------------------------------
def test_model_args_split_into_decoding_sampler_and_cache_options():
    s = parse_model_args({"pretrained": "tiny", "sampler": "threshold", "threshold": "0.7", "cache": "dual",
                          "refresh_every": "4", "gen_length": "64", "mc_num": "16", "greedy_check": "true",
                          "trust_remote_code": True})
    assert (s.sampler, s.cache, s.gen_length, s.mc_num, s.greedy_check) == ("threshold", "dual", 64, 16, True)
    assert s.sampler_options == {"threshold": 0.7} and s.cache_options == {"refresh_every": 4}
    assert parse_model_args({"cache": None}).cache == "none"  # lm-eval turns "cache=none" into None
    assert parse_model_args({}).cache is None  # the family's default
    typed = parse_model_args({"sampler": "threshold", "threshold": 1, "strict": "yes", "cache": "none"})
    assert typed.sampler_options == {"threshold": 1.0, "strict": True} and typed.cache == "none"
    assert isinstance(typed.sampler_options["threshold"], float)


@pytest.mark.parametrize("args, message", [
    ({"sampler": "thresh"}, "unknown sampler 'thresh' (did you mean 'threshold'?)"),
    ({"sampler": "threshold", "treshold": 0.5}, "unknown model arg 'treshold' (did you mean 'threshold'?)"),
    ({"cache": "duall"}, "unknown cache 'duall' (did you mean 'dual'?)"),
    ({"sampler": "threshold", "threshold": -1}, "threshold must be >= 0"),
    ({"gen_length": "lots"}, "option gen_length must be an integer or None (got 'lots')"),
    ({"gen_length": 0}, "gen_length=0 must be a positive integer"),
    ({"sampler": "threshold", "threshold": "abc"}, "sampler 'threshold': option threshold must be a number (got 'abc')"),
    ({"sampler": "threshold", "threshold": float("nan")}, "option threshold must be a finite number (got nan)"),
    ({"sampler": "threshold", "factor": "x"}, "sampler 'threshold': option factor must be a number or None (got 'x')"),
    ({"sampler": "threshold", "strict": "maybe"}, "option strict must be true or false (got 'maybe')"),
    ({"temperature": "hot"}, "option temperature must be a number (got 'hot')"),
    ({"seed": "x"}, "option seed must be an integer or None (got 'x')"),
    ({"steps": True}, "option steps must be an integer or None (got True)"),
    ({"mc_num": 10, "mc_batch_size": 4}, "mc_num=10 is not a multiple of mc_batch_size=4"),
])
def test_bad_model_args_fail_in_one_line(args, message):
    with pytest.raises(ValueError) as info:
        parse_model_args(args)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_geometry_errors_show_at_construction(model):
    with pytest.raises(ValueError, match="gen_length=20 is not a multiple of block_length=8"):
        make_lm(model, gen_length=20, block_length=8)
    with pytest.raises(ValueError, match="steps=3 is not a multiple of the number of blocks"):
        make_lm(model, steps=3)
    with pytest.raises(ValueError, match="cache 'block' does not fit"):
        make_lm(model, cache="block")


def test_a_model_that_cannot_be_loaded_is_a_one_line_error(tmp_path):
    with pytest.raises(ValueError, match="has no config.json"):
        DiffusionLM(pretrained=str(tmp_path))


def test_canvas_shrinks_to_whole_blocks_and_steps_scale(model):
    s = parse_model_args({"gen_length": 32, "block_length": 8, "steps": 16})
    resolve_defaults(s, model)
    canvas = plan_canvas(s, model, 10)
    assert (canvas.gen_length, canvas.block_length, canvas.steps, canvas.max_tokens) == (16, 8, 8, 10)
    full = plan_canvas(s, model, None)
    assert (full.gen_length, full.steps, full.max_tokens) == (32, 16, 32)
    assert plan_canvas(s, model, 500).gen_length == 32


def test_checkpoint_generation_config_sets_the_default_canvas(model, tmp_path):
    for name in PEAKY.iterdir():
        (tmp_path / name.name).write_bytes(name.read_bytes())
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": 1, "gen_length": 24, "block_length": 12}))
    lm = DiffusionLM(pretrained=str(tmp_path))
    assert (lm.settings.gen_length, lm.settings.block_length) == (24, 12)


# --------------------------------------------------------------------------------------------------
# generate_until
# --------------------------------------------------------------------------------------------------
def test_batched_generation_equals_one_by_one(model):
    gen = {"until": [], "max_gen_toks": 16}
    reqs = requests("generate_until", [(p, gen) for p in PROMPTS])
    batched = make_lm(model, sampler="threshold", threshold=0.7, batch_size=4).generate_until(reqs)
    alone = make_lm(model, sampler="threshold", threshold=0.7, batch_size=1).generate_until(reqs)
    assert batched == alone
    direct = dllm.generate(model, PROMPTS[0], sampler="threshold", threshold=0.7, gen_length=16, block_length=8)
    assert batched[0] == direct.texts[0]


def test_until_and_max_gen_toks_are_honoured_inside_the_loop(model, monkeypatch):
    calls = []
    real = dllm.generate

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(dllm, "generate", spy)
    lm = make_lm(model, batch_size=8)
    free = lm.generate_until(requests("generate_until", [(p, {"until": []}) for p in PROMPTS]))
    stop = next(ch for ch in free[0][2:] if ch.strip())  # a character the free output contains
    lm_stop = make_lm(model, batch_size=8)
    cut = lm_stop.generate_until(requests("generate_until", [(PROMPTS[0], {"until": [stop], "max_gen_toks": 16})]))
    assert cut[0] == free[0][: free[0].index(stop)]
    assert calls[-1]["stop"] == [stop]
    assert lm_stop.speed.tasks["t"].forwards < lm.speed.tasks["t"].forwards / len(PROMPTS)  # the row stopped early
    short = make_lm(model).generate_until(requests("generate_until", [(p, {"until": [], "max_gen_toks": 5}) for p in PROMPTS]))
    assert calls[-1]["gen_length"] == 8  # one block of 8 covers 5 tokens
    assert all(len(model.encode(text)) <= 5 for text in short)


def test_requests_group_by_task_and_settings_and_count_speed_per_task(model):
    lm = make_lm(model, batch_size=8)
    reqs = requests("generate_until", [(p, {"until": ["\n"]}) for p in PROMPTS[:3]], task="a")
    reqs += requests("generate_until", [(p, {"until": ["\n"], "max_gen_toks": 8}) for p in PROMPTS[3:]], task="b")
    reqs.append(reqs[-1])  # lm-eval pads data-parallel ranks by repeating the last request
    out = lm.generate_until(reqs)
    assert out[-1] == out[-2]
    speed = lm.get_model_info()["dllm"]["speed"]
    # each task's counters are those of the engine decoding that task's prompts on their own canvas
    for task, prompts, canvas in (("a", PROMPTS[:3], 16), ("b", PROMPTS[3:], 8)):
        direct = dllm.generate(model, prompts, gen_length=canvas, block_length=8, stop=["\n"])
        assert (out[:3] if task == "a" else out[3:6]) == direct.texts
        stats = speed[task]
        assert stats["samples"] == 3  # the repeated request is not decoded (or counted) twice
        assert stats["tokens"] == direct.stats.tokens and stats["forwards"] == sum(direct.stats.row_nfe)
        assert stats["nfe"] == direct.stats.nfe


def test_a_truncation_warning_is_a_line_of_its_own_and_kept_in_the_results(model, capsys):
    lm = make_lm(model)
    long_prompt = "x" * (lm.max_length * 2)
    lm.generate_until(requests("generate_until", [(long_prompt, {"until": []}), (long_prompt, {"until": []})]))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "cut from the left" in line]
    assert len(lines) == 1 and lines[0].startswith("dllm: warning: prompts longer than")  # once, at a line start
    assert any("cut from the left" in w for w in lm.get_model_info()["dllm"]["warnings"])


def test_chat_template_is_applied_when_lm_eval_asks(model):
    lm = make_lm(model)
    text = lm.apply_chat_template([{"role": "user", "content": "hi"}])
    assert text == model.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                                       add_generation_prompt=True)
    results = lm_eval.simple_evaluate(model=lm, tasks=["dllm_sort"], task_manager=dllm.eval.task_manager(include_defaults=False),
                                      limit=2, apply_chat_template=True, log_samples=True)
    context = results["samples"]["dllm_sort"][0]["arguments"][0][0]
    assert context.startswith(text.split("hi")[0]) and "Sort:" in context


# --------------------------------------------------------------------------------------------------
# likelihood requests
# --------------------------------------------------------------------------------------------------
def test_loglikelihood_requests_use_the_mc_estimator(model):
    lm = make_lm(model, mc_num=8, batch_size=4, seed=3)
    reqs = requests("loglikelihood", [("Sort: 3 1 2\n", "1 2 3"), ("", "abc")])
    (ll, greedy), (ll_empty, _) = lm.loglikelihood(reqs)
    prefix, target = lm._encode_pair("Sort: 3 1 2\n", "1 2 3")
    assert ll == likelihood.mc_loglikelihood(model, prefix, target, mc_num=8, batch_size=4, seed=3)[0]
    assert greedy is False
    expected_empty = likelihood.mc_loglikelihood(model, [lm.prefix_token_id], model.encode("abc"), mc_num=8,
                                                 batch_size=4, seed=3)[0]
    assert ll_empty == expected_empty
    assert lm.speed.tasks["t"].ll_requests == 2 and lm.speed.tasks["t"].ll_forwards == 4


def test_greedy_check_is_optional(model):
    lm = make_lm(model, mc_num=4, batch_size=4, greedy_check=True)
    for context in ("Sort: 3 1 2=", "abc=", "zz", "The answer is"):  # one whose greedy answer survives decode/encode
        prefix = model.encode(context)
        out = dllm.generate(model, [prefix], gen_length=4, block_length=4, steps=4, eos_ids=[])
        ids = out.canvases[0][len(prefix):]
        answer = model.decode(ids)
        if model.encode(answer) == ids and model.encode(context + answer) == prefix + ids:
            break
    else:
        pytest.fail("none of the contexts has a greedy answer that survives decode/encode: add one")
    [(_, greedy)] = lm.loglikelihood(requests("loglikelihood", [(context, answer)]))
    assert greedy is True
    other = answer[:-1] + ("a" if answer[-1] != "a" else "b")
    [(_, greedy)] = lm.loglikelihood(requests("loglikelihood", [(context, other)]))
    assert greedy is False
    assert make_lm(model, mc_num=4, batch_size=4).loglikelihood(requests("loglikelihood", [(context, answer)]))[0][1] is False


def test_loglikelihood_rolling_sums_windows(model):
    lm = make_lm(model, mc_num=4, batch_size=4)
    text = "the quick brown fox jumps over the lazy dog " * 3
    [total] = lm.loglikelihood_rolling(requests("loglikelihood_rolling", [(text,)]))
    windows = likelihood.rolling_windows(model.encode(text), lm.prefix_token_id, lm.max_length - 1)
    assert len(windows) > 1
    expected = sum(likelihood.mc_loglikelihood(model, c, t, mc_num=4, batch_size=4)[0] for c, t in windows)
    assert total == pytest.approx(expected, abs=1e-4)


# --------------------------------------------------------------------------------------------------
# tasks and results JSON
# --------------------------------------------------------------------------------------------------
def test_embedded_tasks_are_found_without_include_path():
    manager = dllm.eval.task_manager()
    for task in ("dllm_arith", "dllm_json", "dllm_sort", "dllm_arith_mc", "dllm_json_mc", "dllm_sort_mc"):
        assert task in manager.all_tasks
    assert "gsm8k" in manager.all_tasks  # lm-eval's own tasks stay available


def test_task_metrics_reuse_the_tiny_scorers():
    from dllm.eval.tasks import utils

    doc = {"target": '{"name": "Ada", "age": 20, "city": "Rome"}'}
    assert utils.process_json(doc, ['{"name": "Ada", "age": 21, "city": "Rome"}']) == pytest.approx(
        {"valid_json": 1.0, "field_accuracy": 2 / 3, "exact_match": 0.0})
    assert utils.process_json(doc, ['{"name": "Ada", "city": "Rome", "age": 20}'])["exact_match"] == 1.0
    assert utils.process_json(doc, ["{not json"]) == {"valid_json": 0.0, "field_accuracy": 0.0, "exact_match": 0.0}
    assert utils.process_arith({"target": "a=1+2=3\n#### 3"}, ["a=1+2=3\n#### 3"]) == {"exact_match": 1.0}
    assert utils.process_arith({"target": "a=1+2=3\n#### 3"}, ["#### 4"]) == {"exact_match": 0.0}
    assert utils.process_sort({"target": "1 2 3"}, [" 1 2  3 "]) == {"exact_match": 1.0}


def test_results_json_holds_speed_statistics_and_versions(model):
    lm = make_lm(model, sampler="threshold", mc_num=4, batch_size=4)
    results = lm_eval.simple_evaluate(model=lm, tasks=["dllm_sort", "dllm_json", "dllm_sort_mc"], limit=3,
                                      task_manager=dllm.eval.task_manager(include_defaults=False))
    info = json.loads(json.dumps(results["config"], default=str))["dllm"]
    assert info["versions"]["dllm"] == dllm.__version__ and info["versions"]["lm_eval"] and info["versions"]["torch"]
    assert info["settings"]["sampler"] == "threshold" and info["decoding"]["sampler"]["threshold"] == 0.9
    assert info["decoding"]["cache"]["cache"] == "none"
    for task in ("dllm_sort", "dllm_json"):
        speed = info["speed"][task]
        assert speed["samples"] == 3
        for key in ("nfe", "nfe_per_sample", "tokens", "tpf", "tokens_per_second", "seconds"):
            assert key in speed
    assert info["speed"]["dllm_sort_mc"]["ll_requests"] == 12
    assert set(results["results"]["dllm_json"]) >= {"valid_json,none", "field_accuracy,none", "exact_match,none"}


@pytest.mark.parametrize("family", ["dream", "fast_dllm_v2"])  # logit shift; shift + block-causal attention
def test_shifted_and_block_causal_families_run_through_the_lm(family):
    from helpers import random_model

    model = random_model(family, 0)
    gen = {"until": ["x"], "max_gen_toks": 10}
    reqs = requests("generate_until", [(p, gen) for p in PROMPTS[:4]])
    batched = DiffusionLM(pretrained=model, gen_length=16, sampler="threshold", threshold=0.5, batch_size=4)
    alone = DiffusionLM(pretrained=model, gen_length=16, sampler="threshold", threshold=0.5, batch_size=1)
    assert batched.generate_until(reqs) == alone.generate_until(reqs)
    [(ll, _)] = batched.loglikelihood(requests("loglikelihood", [("abc", "d")]))
    [token] = model.encode("d")
    logits = model.logits([model.encode("abc") + [model.mask_id]])[0]
    assert ll == pytest.approx(float(logits[2].log_softmax(-1)[token]), abs=1e-5)  # shifted: row i-1 scores token i


# --------------------------------------------------------------------------------------------------
# modifiers, EoTP, grammar / schema model args and the method statistics they produce
# --------------------------------------------------------------------------------------------------
JSON_PROMPTS = ["To JSON: The box weighs 12 kg, is painted black and is built from copper.\n",
                "To JSON: Ada is 20.\n", "Sort: 31 12 19\n"]
SCHEMA = {"type": "object", "properties": {"item": {"type": "string"}, "weight": {"type": "integer"}},
          "required": ["item", "weight"]}


@pytest.fixture(scope="module")
def tiny():
    return dllm.load("tiny")


@pytest.fixture()
def schema_file(tmp_path):
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(SCHEMA))
    return str(path)


def test_structure_model_args_are_parsed_typed_and_routed(schema_file):
    # lm-eval splits model_args at commas, so several modifiers are joined by "+"
    from lm_eval.utils import simple_parse_args_string

    args = simple_parse_args_string("sampler=threshold,threshold=0.8,modifiers=eoser+,gamma_min=0.01,"
                                    "gamma_max=1,eotp=predicted,max_rejections=5,grammar=json")
    s = parse_model_args(args)
    assert s.modifiers == ("eoser",) and s.modifier_options == {"gamma_min": 0.01, "gamma_max": 1.0}
    assert isinstance(s.modifier_options["gamma_max"], float) and s.sampler_options == {"threshold": 0.8}
    assert (s.eotp, s.max_rejections, s.grammar, s.schema) == ("predicted", 5, "json", None)
    described = s.describe()
    assert described["modifiers"] == ["eoser"] and described["modifier_options"]["gamma_min"] == 0.01
    assert parse_model_args({"eotp": True}).eotp == "committed" and parse_model_args({"eotp": None}).eotp is None
    assert parse_model_args({"modifiers": ["eoser"]}).modifiers == ("eoser",)
    assert parse_model_args({"schema": schema_file, "slot_length": "4"}).slot_length == 4
    assert parse_model_args({"schema": schema_file, "slot_length": "model"}).slot_length == "model"


@pytest.mark.parametrize("args, message", [
    ({"modifiers": "eosr"}, "unknown modifier 'eosr' (did you mean 'eoser'?)"),
    ({"gamma_min": 0.1}, "model arg 'gamma_min' is an option of modifier 'eoser': name the modifier too, modifiers=eoser"),
    ({"modifiers": "eoser", "gamma_min": 2}, "eoser: need 0 <= gamma_min <= gamma_max <= 1"),
    ({"modifiers": "eoser", "gamma_min": "low"}, "modifier 'eoser': option gamma_min must be a number (got 'low')"),
    ({"eotp": "sometimes"}, "model arg eotp='sometimes' must be one of committed, predicted"),
    ({"max_rejections": -1}, "model arg max_rejections=-1 must be an integer >= 0"),
    ({"max_rejections": "many"}, "option max_rejections must be an integer (got 'many')"),
    ({"slot_length": 4}, "slot_length sizes the slots of a schema scaffold: give schema=PATH too"),
    ({"slot_length": "wide", "schema": "x.json"}, "model arg slot_length='wide' must be model, schema or a positive"),
    ({"grammar": "/no/such.lark"}, "model arg grammar: grammar file not found: /no/such.lark"),
    ({"schema": "/no/such.json"}, "model arg schema='/no/such.json': cannot read it"),
    ({"grammar": "json", "schema": "x.json"}, "give model arg grammar= or schema=, not both"),
])
def test_bad_structure_model_args_fail_in_one_line(args, message):
    with pytest.raises(ValueError) as info:
        parse_model_args(args)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_schema_scaffold_longer_than_the_canvas_fails_at_construction(tiny, schema_file):
    with pytest.raises(ValueError, match="is .* tokens, longer than gen_length=16: raise gen_length"):
        DiffusionLM(pretrained=tiny, schema=schema_file, slot_length=8, gen_length=16, block_length=16)


def test_structure_args_reach_the_decoder_and_method_statistics_reach_the_results(tiny, schema_file):
    until = {"until": ["\n"]}
    lm = DiffusionLM(pretrained=tiny, modifiers="eoser", gamma_min=0.01, eotp="committed", grammar="json")
    out = lm.generate_until(requests("generate_until", [(p, until) for p in JSON_PROMPTS]))
    direct = dllm.generate(tiny, JSON_PROMPTS, modifiers=["eoser"], gamma_min=0.01, eotp="committed",
                           grammar="json", stop=["\n"])
    assert out == direct.texts
    stats = lm.get_model_info()["dllm"]["speed"]["t"]
    parses = [_parses(text) for text in direct.texts]
    assert stats["json_valid_rate"] == pytest.approx(sum(parses) / 3) and "schema_valid_rate" not in stats
    assert stats["grammar_rejections"] == sum(direct.stats.counters["grammar_rejections"])
    assert stats["stuck"] == direct.status.count("stuck")

    lm = DiffusionLM(pretrained=tiny, schema=schema_file, max_rejections=0)  # the tiny model writes extra fields
    out = lm.generate_until(requests("generate_until", [(p, until) for p in JSON_PROMPTS[:2]]))
    direct = dllm.generate(tiny, JSON_PROMPTS[:2], schema=SCHEMA, max_rejections=0, stop=["\n"], gen_length=32)
    assert out == direct.texts
    stats = lm.get_model_info()["dllm"]["speed"]["t"]
    assert stats["stuck"] == direct.status.count("stuck") >= 1 and stats["stuck_rate"] == stats["stuck"] / 2
    assert stats["schema_valid_rate"] <= stats["json_valid_rate"] <= 1 - stats["stuck_rate"]

    lm = DiffusionLM(pretrained=tiny, sampler="freedave")
    out = lm.generate_until(requests("generate_until", [(p, until) for p in JSON_PROMPTS]))
    direct = dllm.generate(tiny, JSON_PROMPTS, sampler="freedave", stop=["\n"])
    stats = lm.get_model_info()["dllm"]["speed"]["t"]
    summary = direct.stats.counter_summaries["accepted"]
    assert out == direct.texts and stats["accepted_mean"] == pytest.approx(summary["mean"])
    assert stats["accepted_events"] == summary["count"] and "stuck" not in stats and "json_valid_rate" not in stats


def _parses(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def test_the_table_shows_valid_json_and_method_columns_only_where_present():
    from dllm.eval.sweep import markdown, table_rows

    speed = {"a": {"samples": 2, "tokens": 4, "forwards": 2, "tpf": 2.0, "accepted_mean": 2.5, "stuck": 1,
                   "grammar_rejections_per_sample": 3.0, "json_valid_rate": 0.5, "schema_valid_rate": 0.0},
             "b": {"samples": 2, "tokens": 4, "forwards": 4, "tpf": 1.0}}
    results = {"results": {"a": {"exact_match,none": 1.0}, "b": {"exact_match,none": 0.5, "valid_json,none": 1.0}},
               "config": {"dllm": {"speed": speed}}, "n-samples": {}}
    rows = table_rows(results, "freedave", "none")
    assert rows[0]["valid_json"] == 0.5 and rows[1]["valid_json"] == 1.0  # the task's metric wins where it has one
    text = markdown(rows)
    assert text.splitlines()[0].endswith("| seconds | valid JSON | schema-valid | accepted | rejections/sample | stuck |")
    assert text.splitlines()[2].endswith("| 0.500 | 0.000 | 2.50 | 3.00 | 1 |")
    assert text.splitlines()[3].endswith("| 1.000 | - | - | - | - |")
    plain = markdown(table_rows({"results": {"b": {"exact_match,none": 1.0}}, "config": {}}, "static", "none"))
    assert plain.splitlines()[0].endswith("| tokens/s | seconds |")  # no method: the table is as before
