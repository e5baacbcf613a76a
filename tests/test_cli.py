"""``dllm generate`` from the command line."""

import json

from dllm.cli import main

from conftest import DECODES

MODEL = str(DECODES / "llada_peaky")


def test_generate_prints_text_and_a_stats_line(capsys):
    code = main(["generate", "--model", MODEL, "--prompt", "Hello", "--chat", "--gen-length", "32", "--block-length", "8",
                 "--sampler", "threshold", "--threshold", "0.9", "--cache", "dual"])
    captured = capsys.readouterr()
    assert code == 0
    assert captured.out.strip()
    assert "NFE 14" in captured.err and "sampler threshold" in captured.err and "cache dual" in captured.err


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
    err = capsys.readouterr().err.strip()
    assert err.startswith("dllm generate: error: unknown sampler 'nope'") and "\n" not in err
    assert main(["generate", "--model", "/does/not/exist", "--prompt", "hi"]) == 2
    assert "does not exist" in capsys.readouterr().err


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
