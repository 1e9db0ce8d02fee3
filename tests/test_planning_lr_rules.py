"""The LR range test's smoothing and suggestion rules on hand-computed curves."""

import numpy as np

from keras_trainx.planning.lr_rules import debiased_ema, suggest

RATES = np.array([1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3, 1e4])  # slopes compare as differences
# index:             0    1    2    3    4    5    6    7    8    9
SMOOTHED = np.array([9.0, 3.1, 2.9, 3.0, 2.0, 2.5, 1.6, 1.1, 0.9, 5.0])  # minimum at 8, then divergence


def test_debiased_ema_is_the_normalized_weighted_mean_of_the_losses_so_far():
    losses = np.random.default_rng(0).uniform(1, 3, size=40)
    for beta in (0.0, 0.5, 0.98):
        smoothed = debiased_ema(losses, beta)
        for t in range(1, 41):
            weights = (1 - beta) * beta ** np.arange(t - 1, -1, -1)
            assert np.isclose(smoothed[t - 1], weights @ losses[:t] / weights.sum(), rtol=1e-12, atol=0)
    # the first value is the first loss itself (a biased average from zero would give 0.02 * loss)
    assert debiased_ema(losses, 0.98)[0] == losses[0]


def test_rules_on_a_hand_computed_curve():
    # steepest: the largest fall between neighbours after the skipped first update, 3.0 -> 2.0 at 1e-2;
    # minimum at 1e3 -> 1e2; valley: the longest decreasing subsequence 3.1, 2.9, 2.0, 1.6, 1.1, 0.9 spans
    # indices 1..8, halfway is 4 (1e-1); the longest decreasing run of neighbours (5..8) would give 6
    assert suggest(RATES, SMOOTHED, skip=1) == {"steepest": 1e-2, "minimum/10": 100.0, "valley": 0.1}


def test_the_skipped_updates_are_left_out():
    # without the skip the first fall, 9.0 -> 3.1, is the steepest, and the valley starts at index 0
    assert suggest(RATES, SMOOTHED, skip=0) == {"steepest": 1e-5, "minimum/10": 100.0, "valley": 1e-1}


def test_non_finite_losses_end_the_usable_part():
    smoothed = SMOOTHED.copy()
    smoothed[5] = np.nan  # only 2.0 at index 4 after 3.1, 2.9, 3.0: the minimum is at 1e-1
    assert suggest(RATES, smoothed, skip=1) == {"steepest": 1e-2, "minimum/10": 1e-2, "valley": 1e-3}


def test_fewer_than_three_usable_updates_suggest_nothing():
    assert suggest(RATES, np.array([2.0, 1.0, np.inf, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]), skip=0) == {}
    assert suggest(RATES[:3], np.array([3.0, 2.0, 1.0]), skip=1) == {}
