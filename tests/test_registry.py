"""``dllm.registry``: one "did you mean" lookup, option types from the dataclass fields, no silent re-registration."""

import math
from dataclasses import dataclass

import pytest

import dllm
from dllm import registry
from dllm.stops import cut_at_stops, normalize_stops

from conftest import DECODES


def test_unknown_names_suggest_the_closest():
    with pytest.raises(ValueError, match=r"^unknown sampler 'thresh' \(did you mean 'threshold'\?\); available: "):
        dllm.samplers.build("thresh")
    with pytest.raises(ValueError, match=r"^unknown cache 'duall' \(did you mean 'dual'\?\)"):
        dllm.caches.build("duall", "full", "llada", {})
    with pytest.raises(ValueError, match=r"unknown option 'refresh_evry' for cache 'dual' \(did you mean 'refresh_every'\?\)"):
        dllm.caches.build("dual", "full", "llada", {"refresh_evry": 2})
    assert registry.did_you_mean("zzz", ["static"]) == ""


@pytest.mark.parametrize("options, expected", [
    ({"threshold": "0.5"}, {"threshold": 0.5}),
    ({"threshold": 1}, {"threshold": 1.0}),
    ({"strict": "yes"}, {"strict": True}),
    ({"strict": "False"}, {"strict": False}),
    ({"strict": 0}, {"strict": False}),
    ({"factor": "none"}, {"factor": None}),
    ({"factor": None}, {"factor": None}),
    ({"cap": None}, {"cap": "none"}),  # lm-eval reads "cap=none" as None: for a text option that is the text
])
def test_option_values_are_converted_to_the_field_types(options, expected):
    sampler = dllm.samplers.build("threshold", options)
    got = {k: getattr(sampler, k) for k in expected}
    assert got == expected and all(type(got[k]) is type(v) for k, v in expected.items())


@pytest.mark.parametrize("options, message", [
    ({"threshold": "abc"}, "sampler 'threshold': option threshold must be a number (got 'abc')"),
    ({"threshold": math.nan}, "sampler 'threshold': option threshold must be a finite number (got nan)"),
    ({"threshold": math.inf}, "option threshold must be a finite number (got inf)"),
    ({"threshold": True}, "option threshold must be a number (got True)"),
    ({"strict": "maybe"}, "option strict must be true or false (got 'maybe')"),
    ({"strict": 2}, "option strict must be true or false (got 2)"),
    ({"factor": "x"}, "option factor must be a number or None (got 'x')"),
    ({"fallback": 3}, "option fallback must be text (got 3)"),
])
def test_wrong_option_types_fail_in_one_line_naming_the_option(options, message):
    with pytest.raises(ValueError) as info:
        dllm.samplers.build("threshold", options)
    assert str(info.value).endswith(message) and str(info.value).startswith("sampler 'threshold': option ")


def test_ready_objects_and_the_python_api_are_checked_the_same_way():
    from dllm.samplers.threshold import Threshold

    with pytest.raises(ValueError, match=r"^sampler 'threshold': option threshold must be a number \(got 'hot'\)$"):
        dllm.samplers.build(Threshold(threshold="hot"))
    model = dllm.load(DECODES / "llada_peaky")
    with pytest.raises(ValueError, match=r"option threshold must be a number \(got 'abc'\)"):
        dllm.generate(model, "hi", gen_length=8, block_length=8, sampler="threshold", threshold="abc")
    with pytest.raises(ValueError, match=r"cache 'dual': option refresh_every must be an integer or None \(got 'x'\)"):
        dllm.generate(model, "hi", gen_length=8, block_length=8, cache="dual", refresh_every="x")


def test_int_fields_refuse_booleans_and_fractions():
    @dataclass
    class Options:
        steps: int = 1
        ratio: float | None = None

    assert registry.coerce_options(Options, {"steps": "8", "ratio": "1e-3"}, "x") == {"steps": 8, "ratio": 0.001}
    assert registry.coerce_options(Options, {"steps": 8.0}, "x") == {"steps": 8}
    for value in (True, 8.5, "eight"):
        with pytest.raises(ValueError, match=f"x: option steps must be an integer \\(got {value!r}\\)"):
            registry.coerce_options(Options, {"steps": value}, "x")


def test_a_taken_name_is_refused_unless_override():
    original = dllm.samplers.build("static").__class__

    with pytest.raises(ValueError, match=r"sampler 'static' is already registered .*override=True"):
        @dllm.samplers.register("static")
        @dataclass
        class Impostor(dllm.samplers.Sampler):
            pass

    assert type(dllm.samplers.build("static")) is original
    try:
        @dllm.samplers.register("static", override=True)
        @dataclass
        class Replacement(dllm.samplers.Sampler):
            pass

        assert type(dllm.samplers.build("static")) is Replacement
    finally:
        dllm.samplers.register("static", override=True)(original)
    assert type(dllm.samplers.build("static")) is original
    dllm.samplers.register("static")(original)  # the same class again (a module imported twice): fine


def test_one_literal_parser():
    assert [registry.parse_literal(t) for t in ("0.9", "8", "true", "False", "None", "none", "dual", " x ")] == \
        [0.9, 8, True, False, None, "none", "dual", "x"]
    assert registry.parse_option("threshold=0.9") == ("threshold", 0.9)
    with pytest.raises(ValueError, match="must look like KEY=VALUE"):
        registry.parse_option("threshold")
    assert registry.parse_spec("dual:refresh_every=2", "--caches") == ("dual", [("refresh_every", 2)])


def test_stop_strings():
    assert cut_at_stops("abcXdefY", ["Y", "X"]) == "abc"
    assert cut_at_stops("abYYc", ["YY", "bY"]) == "a"
    assert cut_at_stops("abc", []) == "abc" and cut_at_stops("abc", [""]) == "abc"
    assert normalize_stops("\n") == ("\n",) and normalize_stops(None) == ()
    with pytest.raises(ValueError, match="stop='' would end every output"):
        normalize_stops(["\n", ""])


def test_the_block_length_rule(tmp_path):
    from dllm.canvas_defaults import default_block_length, default_gen_length, format_prompt

    tiny = dllm.load("tiny")
    assert default_gen_length(tiny) == 32 and default_block_length(tiny, 32) == 16
    assert default_block_length(tiny, 48) == 16 and default_block_length(tiny, 40) == 40
    peaky = dllm.load(DECODES / "llada_peaky")  # no canvas in its generation_config.json
    assert default_gen_length(peaky) == 128 and default_block_length(peaky, 64) == 32
    assert default_block_length(peaky, 24) == 24
    assert format_prompt(tiny, "Sort: 3 1 2") == "Sort: 3 1 2\n" == format_prompt(tiny, "Sort: 3 1 2\n")
    assert format_prompt(peaky, "hi") == "hi" and format_prompt(tiny, "hi", chat=True) == "hi"
