"""The interval rules every rate and winner in comparisons and evals rests on, against published figures."""

import pytest

from tunelab.evaluate.stats import (mean_difference, mean_interval, means_to_settle, prompts_to_settle,
                                    rate_difference, wilson)


def test_wilson_matches_newcombes_worked_examples():
    # Newcombe (1998), Statistics in Medicine 17:857, table I: 81/263 → 0.2553–0.3662; 0/10 → 0–0.2775.
    got = wilson(81, 263)
    assert (round(got.low, 4), round(got.high, 4), got.n) == (0.2553, 0.3662, 263)
    assert (wilson(0, 10).low, round(wilson(0, 10).high, 4)) == (0.0, 0.2775)
    assert (wilson(0, 3).low, wilson(3, 3).high) == (0.0, 1.0)  # exactly, not within rounding
    assert wilson(0, 0).value is None


def test_the_difference_of_two_rates_matches_newcombes_method_10():
    # Newcombe (1998), Statistics in Medicine 17:873, table II: 56/70 − 48/80 → 0.0524 to 0.3339.
    d = rate_difference(56, 70, 48, 80)
    assert (round(d.low, 4), round(d.high, 4)) == (0.0524, 0.3339) and d.settled


def test_a_handful_of_prompts_settles_only_a_landslide():
    assert not rate_difference(2, 5, 0, 5).settled
    assert not rate_difference(7, 36, 3, 36).settled  # 19% against 8% on the lab's 36 prompts
    assert rate_difference(35, 36, 3, 36).settled
    with pytest.raises(ValueError):
        rate_difference(1, 0, 0, 5)


def test_prompts_to_settle_grows_as_the_gap_narrows_and_is_none_without_one():
    assert prompts_to_settle(0.19, 0.08) > prompts_to_settle(0.5, 0.08) > 1
    assert prompts_to_settle(0.3, 0.3) is None
    n = prompts_to_settle(0.19, 0.08)
    settles = rate_difference(round(0.19 * 2 * n), 2 * n, round(0.08 * 2 * n), 2 * n)
    assert settles.settled  # with twice that many, the same rates would hold


def test_means_and_their_difference():
    got = mean_interval([0.3, 0.4, 0.5])
    assert got.low < 0.4 < got.high and got.n == 3
    assert mean_interval([1.0]).low is None
    assert not mean_difference([0.3, 0.5, 0.4], [0.35, 0.45, 0.4]).settled
    assert mean_difference([0.9, 0.92, 0.88, 0.91], [0.1, 0.12, 0.09, 0.11]).settled
    assert means_to_settle([1, 2, 3], [1, 2, 3]) is None
