"""Sweep specs: ``a..b/step`` ranges, comma lists, sampler and grid expansion, one-line errors."""

import pytest

import dllm
from dllm.eval.ranges import expand_grid, expand_samplers, parse_range, parse_values, point_text


def test_ranges_come_out_as_typed():
    assert parse_range("0.5..0.95/0.05") == [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]
    assert repr(parse_range("0.1..0.3/0.1")) == "[0.1, 0.2, 0.3]"  # not 0.30000000000000004
    assert parse_range("8..32/8") == [8, 16, 24, 32] and all(type(v) is int for v in parse_range("8..32/8"))
    assert parse_range("1..4") == [1, 2, 3, 4]
    assert parse_range("0.5..0.5/0.1") == [0.5]
    assert parse_range("0.5..0.95/0.1") == [0.5, 0.6, 0.7, 0.8, 0.9]  # b off the grid: up to b
    assert parse_range("-1..1/0.5") == [-1.0, -0.5, 0.0, 0.5, 1.0]
    assert parse_range("1..2/0.5") == [1.0, 1.5, 2.0] and type(parse_range("1..2/0.5")[0]) is float


def test_value_lists():
    assert parse_values("0.6,0.7,0.8") == [0.6, 0.7, 0.8]
    assert parse_values("0.5..0.7/0.1,0.95,0.6") == [0.5, 0.6, 0.7, 0.95]  # duplicates dropped
    assert parse_values("true,false") == [True, False]
    assert parse_values("low_confidence,random") == ["low_confidence", "random"]


@pytest.mark.parametrize("text, message", [
    ("0.9..0.5/0.1", "runs downward: write it low..high/step (0.5..0.9/0.1)"),
    ("0.5..0.9/0", "step 0 must be > 0"),
    ("0.5..0.9/-0.1", "step -0.1 must be > 0"),
    ("a..0.9/0.1", "'a' is not a number"),
    ("0.5..b", "'b' is not a number"),
    ("0.5..0.9/x", "'x' is not a number"),
    ("0.5..0.9/", "'' is not a number"),
    ("0.5..inf/1", "not a finite number"),
    ("1..2..3", "malformed range '1..2..3'"),
    ("0..1/0.0001", "more than 1000"),
])
def test_malformed_ranges_are_one_line_errors(text, message):
    _one_line_error(parse_range, text, message)


def test_sampler_specs_expand_into_points():
    points = expand_samplers("static,threshold:threshold=0.5..0.95/0.05,strict=true")
    assert points[0] == ("static", {})
    assert [opts["threshold"] for _, opts in points[1:]] == parse_range("0.5..0.95/0.05")
    assert all(name == "threshold" and opts["strict"] is True for name, opts in points[1:])
    assert len(points) == 11
    # a comma list continues the option before it; a registered sampler name starts a new entry
    assert expand_samplers("threshold:threshold=0.6,0.7,0.8,static") == [
        ("threshold", {"threshold": 0.6}), ("threshold", {"threshold": 0.7}), ("threshold", {"threshold": 0.8}),
        ("static", {})]
    # products in the order written; colon-separated options; decoding args such as steps
    assert expand_samplers("threshold:threshold=0.5,0.9:strict=true,false") == [
        ("threshold", {"threshold": 0.5, "strict": True}), ("threshold", {"threshold": 0.5, "strict": False}),
        ("threshold", {"threshold": 0.9, "strict": True}), ("threshold", {"threshold": 0.9, "strict": False})]
    assert expand_samplers("static:steps=8..32/8") == [("static", {"steps": s}) for s in (8, 16, 24, 32)]
    assert expand_samplers("static,static") == [("static", {})]
    (point,) = expand_samplers("threshold:threshold=1")  # values take the option's type
    assert point == ("threshold", {"threshold": 1.0}) and type(point[1]["threshold"]) is float
    assert point_text("threshold", {"threshold": 0.55, "strict": True}) == "threshold:threshold=0.55:strict=true"


@pytest.mark.parametrize("text, message", [
    ("threshold:tau=0.6,0.7", "unknown option 'tau' for sampler 'threshold'; its options are: threshold, strict"),
    ("threshold:threshold=0.9..0.5/0.1", "runs downward"),
    ("threshold:threshold=0.5..0.9/0", "step 0 must be > 0"),
    ("threshold:threshold=x..0.9/0.1", "'x' is not a number"),
    ("treshold:threshold=0.5", "unknown sampler 'treshold' (did you mean 'threshold'?)"),
    ("threshold:threshold", "malformed option 'threshold' for sampler 'threshold'"),
    ("strict=true", "starts with an option"),
    ("static,,threshold", "has an empty entry"),
    ("static:remasking=low_confidence,sideways", "remasking='sideways'"),
])
def test_bad_sampler_specs_are_one_line_errors(text, message):
    _one_line_error(expand_samplers, text, message)


def test_sampler_option_errors_name_the_samplers_options():
    _one_line_error(expand_samplers, "static:threshold=0.5..0.9/0.1", ", ".join(dllm.samplers.option_names("static")))


def test_grids():
    assert expand_grid(None) == [{}] and expand_grid("") == [{}]
    grid = expand_grid("gen_length=32,64,block_length=8..16/8,cache=none,dual")
    assert len(grid) == 8
    assert grid[0] == {"gen_length": 32, "block_length": 8, "cache": "none"}
    assert grid[-1] == {"gen_length": 64, "block_length": 16, "cache": "dual"}
    with pytest.raises(ValueError, match="--grid cannot vary 'tau'"):
        expand_grid("tau=0.5")
    assert expand_grid("cache=none,dual:refresh_every=2") == [{"cache": "none"}, {"cache": "dual:refresh_every=2"}]
    with pytest.raises(ValueError, match="unknown cache 'duel' in --grid"):
        expand_grid("cache=none,duel")
    with pytest.raises(ValueError, match="names 'gen_length' twice"):
        expand_grid("gen_length=32,gen_length=64")
    with pytest.raises(ValueError, match="starts with a value"):
        expand_grid("32,gen_length=64")
    with pytest.raises(ValueError, match="runs downward"):
        expand_grid("gen_length=64..32/8")


def _one_line_error(function, text, message):
    with pytest.raises(ValueError) as info:
        function(text)
    assert message in str(info.value) and "\n" not in str(info.value), str(info.value)
