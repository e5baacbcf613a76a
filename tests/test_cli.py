"""``dllm generate`` from the command line."""

import json

import pytest
import torch

import dllm
from dllm.cli import main

from conftest import DECODES

MODEL = str(DECODES / "llada_peaky")


def err_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


def test_generate_prints_what_the_api_returns_and_its_stats(capsys):
    args = dict(chat=True, gen_length=32, block_length=8, sampler="threshold", threshold=0.9, cache="dual")
    code = main(["generate", "--model", MODEL, "--prompt", "Hello", "--chat", "--gen-length", "32", "--block-length", "8",
                 "--sampler", "threshold", "--threshold", "0.9", "--cache", "dual"])
    captured = capsys.readouterr()
    assert code == 0
    out = dllm.generate(dllm.load(MODEL), "Hello", **args)
    assert captured.out == out.texts[0] + "\n"  # the text, exactly, and nothing else on stdout
    tpf = out.stats.tokens / sum(out.stats.row_nfe)
    assert (f"1 prompt(s), {out.stats.tokens} tokens, NFE {out.stats.nfe}, TPF {tpf:.2f}," in captured.err
            and "sampler threshold" in captured.err and "cache dual" in captured.err)


def test_generate_reads_a_prompts_file_in_batches(tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": p}) for p in ["a", "bb", "ccc", "dddd", "eeeee"]))
    code = main(["generate", "--model", MODEL, "--prompts-file", str(prompts), "--batch-size", "2", "--gen-length", "8",
                 "--block-length", "8", "--json", "-o", "remasking=low_confidence"])
    captured = capsys.readouterr()
    assert code == 0
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert [r["prompt"] for r in rows] == ["a", "bb", "ccc", "dddd", "eeeee"]
    assert all(r["nfe"] == 8 for r in rows)
    assert "5 prompt(s)" in captured.err


def test_generate_reports_bad_input_in_one_line(capsys):
    assert main(["generate", "--model", MODEL, "--prompt", "hi", "--sampler", "nope"]) == 2
    assert err_line(capsys).startswith("dllm generate: error: unknown sampler 'nope'")
    assert main(["generate", "--model", "/does/not/exist", "--prompt", "hi"]) == 2
    assert "does not exist" in err_line(capsys)


@pytest.mark.parametrize("content, message", [
    ("", "has no prompts"),
    ("\n  \n", "has no prompts"),
    ('{"prompt": "a"}\n{"text": "b"}\n', 'line 2 has no "prompt" key'),
    ('{"prompt": "a"}\nnot json\n', "line 2 is not JSON"),
    ('{"prompt": 3}\n', '"prompt" must be non-empty text'),
])
def test_a_bad_prompts_file_is_a_one_line_error(tmp_path, capsys, content, message):
    path = tmp_path / "prompts.jsonl"
    path.write_text(content)
    assert main(["generate", "--model", MODEL, "--prompts-file", str(path)]) == 2
    err = err_line(capsys)
    assert err.startswith("dllm generate: error: ") and message in err


@pytest.mark.parametrize("flags, message", [
    (["-o", "threshold=abc", "--sampler", "threshold"], "sampler 'threshold': option threshold must be a number (got 'abc')"),
    (["-o", "threshold=nan", "--sampler", "threshold"], "option threshold must be a finite number (got 'nan')"),
    (["-o", "factor=x", "--sampler", "threshold"], "option factor must be a number or None (got 'x')"),
    (["-o", "strict=maybe", "--sampler", "threshold"], "option strict must be true or false (got 'maybe')"),
    (["--cache", "dual", "-o", "refresh_every=x"], "cache 'dual': option refresh_every must be an integer or None"),
    (["--cache", "dual:refresh_every=x"], "cache 'dual': option refresh_every must be an integer or None"),
    (["--cache", "dual:refresh_every"], "malformed --cache entry 'dual:refresh_every'"),
    (["--cache", "duall"], "unknown cache 'duall' (did you mean 'dual'?)"),
    (["--stop", ""], "stop='' would end every output"),
    (["--device", "banana"], "unknown device 'banana'"),
])
def test_bad_options_are_one_line_errors_naming_the_option(capsys, flags, message):
    assert main(["generate", "--model", MODEL, "--prompt", "hi", "--gen-length", "8", *flags]) == 2
    err = err_line(capsys)
    assert err.startswith("dllm generate: error: ") and message in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_a_one_line_error(capsys):
    assert main(["generate", "--model", MODEL, "--prompt", "hi", "--device", "cuda"]) == 2
    assert "device 'cuda': " in err_line(capsys)


def test_a_batch_size_below_one_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as info:
        main(["generate", "--model", MODEL, "--prompt", "hi", "--batch-size", "-1"])
    assert info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith("argument --batch-size: -1 must be >= 1")


def test_per_cache_options_and_shared_flags(capsys):
    base = ["generate", "--model", MODEL, "--prompt", "Hello", "--gen-length", "16", "--block-length", "8", "--json",
            "--sampler", "threshold", "--threshold", "0.7", "--threads", "1"]
    assert main([*base, "--cache", "dual:refresh_every=2"]) == 0
    inline = capsys.readouterr()
    assert main([*base, "--cache", "dual", "--option", "refresh_every=2"]) == 0
    separate = capsys.readouterr()
    assert inline.out == separate.out and "cache dual" in inline.err
    out = dllm.generate(dllm.load(MODEL), "Hello", gen_length=16, block_length=8, sampler="threshold", threshold=0.7,
                        cache="dual", refresh_every=2)
    assert json.loads(inline.out)["text"] == out.texts[0]


def test_list_samplers(capsys):
    assert main(["generate", "--list-samplers"]) == 0
    out = capsys.readouterr().out
    assert "static:" in out and "threshold:" in out


def test_generate_takes_the_canvas_from_the_checkpoint(capsys):
    # the embedded model's generation_config.json says gen_length 32, block_length 16 (its context is 128, so
    # the old fixed default of 128 new tokens could not even fit a prompt)
    assert main(["generate", "--prompt", "Sort: 31 12 19\n", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["text"] == "12 19 31" and row["nfe"] <= 32


def test_a_task_typed_as_shown_gets_the_embedded_prompt_format(tmp_path, capsys):
    # the tiny model's prompts end in a newline ("Sort: 31 12 19\n"), which a shell cannot type
    assert main(["generate", "--prompt", "Sort: 31 12 19", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["text"] == "12 19 31"
    lines = tmp_path / "prompts.txt"
    lines.write_text("Sort: 31 12 19\nSort: 5 3 4\n")
    rows = tmp_path / "prompts.jsonl"
    rows.write_text(json.dumps({"prompt": "Sort: 9 2 7\n"}) + "\n")
    assert main(["generate", "--prompts-file", str(lines), "--json"]) == 0
    assert [json.loads(r)["text"] for r in capsys.readouterr().out.splitlines()] == ["12 19 31", "3 4 5"]
    assert main(["generate", "--prompts-file", str(rows), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["prompt"] == "Sort: 9 2 7\n" and row["text"] == "2 7 9"  # kept as the file says, not doubled
    assert main(["generate", "--prompt", "Sort: 31 12 19", "--json", "--raw-prompt"]) == 0
    assert json.loads(capsys.readouterr().out)["prompt"] == "Sort: 31 12 19"


def test_ctrl_c_prints_one_line_saying_what_was_kept(monkeypatch, capsys):
    from helpers import interrupt_on_call

    monkeypatch.setattr(dllm, "generate", interrupt_on_call(dllm.generate, 2))
    code = main(["generate", "--model", MODEL, "--prompt", "a", "--prompt", "b", "--prompt", "c", "--batch-size", "1",
                 "--gen-length", "8", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 130
    assert captured.err.strip() == "dllm generate: interrupted: 1 of 3 prompt(s) decoded (printed above); the batch in flight is lost"
    assert captured.out.startswith("--- 'a'\n")


# --------------------------------------------------------------------------------------------------
# structure, EoTP, modifiers and method statistics from the command line (the embedded model)
# --------------------------------------------------------------------------------------------------
JSON_PROMPT = "To JSON: The box weighs 12 kg, is painted black and is built from copper.\n"
SCHEMA = {"type": "object", "properties": {"item": {"type": "string"}, "weight": {"type": "integer"}},
          "required": ["item", "weight"]}


@pytest.fixture(scope="module")
def tiny():
    return dllm.load("tiny")


def generate_json(capsys, *flags):
    assert main(["generate", "--prompt", JSON_PROMPT, "--json", "--threads", "1", *flags]) == 0
    captured = capsys.readouterr()
    return [json.loads(line) for line in captured.out.splitlines()], captured.err


def test_grammar_schema_template_flags_match_the_api(tiny, tmp_path, capsys):
    [row], err = generate_json(capsys, "--grammar", "json")
    direct = dllm.generate(tiny, JSON_PROMPT, grammar="json")
    assert row["text"] == direct.texts[0] and json.loads(row["text"])["item"] == "box" and row["status"] == "eos"
    assert err.rstrip().endswith(", grammar rejections 0, stuck 0")
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SCHEMA))
    # the tiny model's JSON has more fields than this schema allows: with no rejection allowed the row ends
    # stuck at the first one, with a witness
    [row], err = generate_json(capsys, "--schema", str(schema), "--slot-length", "4", "--max-rejections", "0")
    direct = dllm.generate(tiny, JSON_PROMPT, schema=str(schema), slot_length=4, max_rejections=0)
    assert row["text"] == direct.texts[0] and row["status"] == "stuck" == direct.status[0]
    assert row["witness"] == direct.stats.witnesses[0]
    assert f"grammar rejections {sum(direct.stats.counters['grammar_rejections'])}, stuck 1" in err
    # a row that reaches complete_after rejections is finished by the grammar's completion; the summary says so
    [row], err = generate_json(capsys, "--schema", str(schema), "-o", "complete_after=1")
    direct = dllm.generate(tiny, JSON_PROMPT, schema=str(schema), complete_after=1)
    assert row["text"] == direct.texts[0] and row["status"] == "eos" and direct.stats.counters["grammar_completed"][0]
    assert set(json.loads(row["text"])) == {"item", "weight"} and err.rstrip().endswith("completed by the grammar 1")
    [row], _ = generate_json(capsys, "--schema", str(schema), "--slot-length", "model", "--max-rejections", "0")
    direct = dllm.generate(tiny, JSON_PROMPT, schema=str(schema), max_rejections=0)  # open slots: the default
    assert row["text"] == direct.texts[0] and row["status"] == direct.status[0]
    template = '{"item": "<mask:4>"}'
    [row], _ = generate_json(capsys, "--template", template)
    direct = dllm.generate(tiny, JSON_PROMPT, template=template)
    assert row["text"] == direct.texts[0] and row["text"].startswith('{"item": "') and row["text"].endswith("}")
    assert main(["generate", "--prompt", JSON_PROMPT, "--template", template, "--stream", "--threads", "1"]) == 0
    assert capsys.readouterr().out.strip() == direct.texts[0]  # no --gen-length: the canvas is the template's


@pytest.mark.parametrize("flags, message", [
    (["--slot-length", "4"], "slot_length sizes the slots of a schema scaffold: pass schema= too"),
    (["--grammar", "/no/such.lark"], "grammar file not found: /no/such.lark"),
    (["--schema", "/no/such.json"], "schema must be a dict or the path of a JSON file"),
])
def test_bad_structure_flags_are_one_line_errors(capsys, flags, message):
    assert main(["generate", "--prompt", "hi", *flags]) == 2
    err = err_line(capsys)
    assert err.startswith("dllm generate: error: ") and message in err


def test_grammar_and_schema_exclude_each_other_and_eotp_takes_two_modes(capsys):
    for flags in (["--grammar", "json", "--schema", "x.json"], ["--eotp", "sometimes"], ["--max-rejections", "-1"],
                  ["--slot-length", "wide"]):
        with pytest.raises(SystemExit) as info:
            main(["generate", "--prompt", "hi", *flags])
        assert info.value.code == 2
        capsys.readouterr()


def test_eotp_and_modifier_flags_match_the_api(tiny, capsys):
    prompts = [JSON_PROMPT, "Sort: 31 12 19\n"]
    assert main(["generate", "--prompt", prompts[0], "--prompt", prompts[1], "--json", "--modifiers", "eoser+",
                 "-o", "gamma_min=0.01", "--eotp", "predicted", "--threads", "1"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    direct = dllm.generate(tiny, prompts, modifiers=["eoser"], gamma_min=0.01, eotp="predicted")
    assert [r["text"] for r in rows] == direct.texts and [r["nfe"] for r in rows] == direct.stats.row_nfe
    assert direct.stats.modifiers and direct.stats.modifiers[0]["gamma_min"] == 0.01


def test_freedave_reports_its_mean_accepted_draft_length(tiny, capsys):
    [row], err = generate_json(capsys, "--sampler", "freedave")
    direct = dllm.generate(tiny, JSON_PROMPT, sampler="freedave")
    accepted = direct.stats.counter_summaries["accepted"]["mean"]
    assert row["text"] == direct.texts[0] and f", accepted {accepted:.2f}" in err
    assert "grammar rejections" not in err and "stuck" not in err  # only what the run produced


def test_train_filter_is_a_registered_subcommand(tmp_path, capsys):
    from dllm.cli import COMMANDS
    from dllm.learn2pd import cli as learn2pd_cli

    assert COMMANDS["train-filter"][0] == learn2pd_cli.HELP
    with pytest.raises(SystemExit) as info:
        main(["train-filter", "--help"])
    assert info.value.code == 0 and "--max-iterations" in capsys.readouterr().out
    assert main(["train-filter", "--model", "tiny", "--out", str(tmp_path / "f")]) == 2
    assert err_line(capsys) == ("dllm train-filter: error: no training prompts: pass --tasks T1,T2 (embedded tasks) "
                                "or --prompts FILE")
