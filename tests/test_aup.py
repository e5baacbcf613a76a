"""AUP (spec fastdllm_llada_eoser.md §7) and the Pareto front, on the spec's worked example and hand-made curves."""

import math

import pytest

from dllm.eval.aup import aup, aup_detail, pareto_front, weight


def test_the_worked_example_of_the_spec():
    detail = aup_detail([(1, 80), (2, 79), (3, 76), (4, 74)], y_max=82)
    assert detail.value == pytest.approx(218.476, abs=5e-4)
    assert round(detail.value, 2) == 218.48
    assert detail.y_min == 75
    assert detail.kept == ((1, 80), (2, 79), (3, 76))
    assert detail.dropped == ((4, 74),)
    assert [round(weight(y, 82), 5) for y in (80, 79, 76)] == [0.92944, 0.89605, 0.80291]


def test_input_order_does_not_matter():
    assert aup([(4, 74), (2, 79), (3, 76), (1, 80)], y_max=82) == aup([(1, 80), (2, 79), (3, 76), (4, 74)], y_max=82)


def test_a_single_point_is_its_unweighted_rectangle():
    assert aup([(2.5, 60)], y_max=90) == pytest.approx(150.0)  # no weight on the first rectangle
    assert aup([(3, 40)]) == pytest.approx(120.0)


def test_a_flat_curve_at_the_best_accuracy_is_the_full_rectangle():
    # W = 1 at y = y_max: ρ_1·y + (ρ_m − ρ_1)·y
    assert aup([(1, 70), (2, 70), (5, 70)], y_max=70) == pytest.approx(5 * 70)
    # below y_max every trapezoid is weighted by the same W
    w = math.exp(-3 * (1 - 70 / 80))
    assert aup([(1, 70), (2, 70), (5, 70)], y_max=80) == pytest.approx(70 + 4 * 70 * w)


def test_a_monotone_rising_curve_by_hand():
    points = [(1, 50), (2, 60), (4, 80)]
    w = {y: min(math.exp(-3 * (1 - y / 80)), 1) for y in (50, 60, 80)}
    expected = 1 * 50 + 0.5 * 1 * (60 * w[60] + 50 * w[50]) + 0.5 * 2 * (80 * w[80] + 60 * w[60])
    assert aup(points, y_max=80) == pytest.approx(expected)
    assert aup(points) == pytest.approx(expected)  # y_max defaults to the points' own best


def test_more_parallelism_at_equal_accuracy_scores_higher():
    assert aup([(1, 80), (2, 79), (6, 79)], y_max=82) > aup([(1, 80), (2, 79), (3, 79)], y_max=82)


def test_points_below_the_cutoff_are_left_out_wherever_they_lie():
    # an intermediate drop (the reference script would not raise here) and a recovery after it
    detail = aup_detail([(1, 80), (2, 74.9), (3, 76), (4, 75)], y_max=80)
    assert detail.dropped == ((2, 74.9),)
    assert detail.kept == ((1, 80), (3, 76), (4, 75))
    assert detail.value == pytest.approx(aup([(1, 80), (3, 76), (4, 75)], y_max=80))
    # exactly y_1 − 5 stays in
    assert aup_detail([(1, 80), (2, 75)], y_max=80).dropped == ()
    # every later point below the cutoff: only the first rectangle remains
    assert aup([(1, 80), (2, 60), (3, 50)], y_max=80) == pytest.approx(80.0)


def test_ties_in_tpf_count_the_most_accurate_point_once():
    detail = aup_detail([(1, 80), (2, 70), (2, 79), (3, 76)], y_max=82)
    assert detail.kept == ((1, 80), (2, 79), (3, 76))
    assert detail.merged == ((2, 70),)
    assert detail.value == pytest.approx(aup([(1, 80), (2, 79), (3, 76)], y_max=82))
    # a tie at the smallest TPF: the cutoff is measured from the better point
    assert aup_detail([(1, 70), (1, 80), (2, 74)], y_max=80).dropped == ((2, 74),)


def test_a_task_nobody_scored_on_is_zero():
    assert aup([(1, 0), (3, 0)], y_max=0) == 0.0


@pytest.mark.parametrize("points, y_max, message", [
    ([], None, "no points"),
    ([(0, 50)], None, "tpf 0.0 must be"),
    ([(-1, 50)], None, "tpf -1.0 must be"),
    ([(1, 0.5e3)], None, "in percent"),
    ([(1, float("nan"))], None, "in percent"),
    ([(1,)], None, "not a (tpf, accuracy) pair"),
    ([("x", 1)], None, "not a (tpf, accuracy) pair"),
    ([(1, 50)], -1, "y_max=-1"),
])
def test_bad_points_are_one_line_errors(points, y_max, message):
    with pytest.raises(ValueError, match="AUP: ") as info:
        aup(points, y_max=y_max)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_pareto_front():
    points = [(1, 80), (2, 79), (3, 76), (2, 70), (3, 76), (0.5, 80), (4, 60)]
    assert pareto_front(points) == [True, True, True, False, True, False, True]
    assert pareto_front([(1, 50)]) == [True]
    assert pareto_front([]) == []
    # equal accuracy: only the fastest; equal speed: only the most accurate
    assert pareto_front([(1, 50), (2, 50), (2, 40)]) == [False, True, False]
