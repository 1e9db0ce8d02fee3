"""The LR range test's smoothing and suggestion rule on hand-computed curves."""

import numpy as np

from keras_trainx.planning.lr_rules import debiased_ema, loss_noise, suggest

RATES = np.array([1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3, 1e4])  # slopes compare as differences
# index:             0    1    2    3    4    5    6    7    8    9
SMOOTHED = np.array([9.0, 3.1, 2.9, 3.0, 2.0, 2.5, 1.6, 1.1, 0.9, 5.0])  # minimum at 8, then divergence
LOSSES = np.array([9.0, 3.0, 2.8, 3.2, 1.8, 2.6, 1.4, 1.0, 0.8, 9.0])
# |second differences| of LOSSES[1:9] (3.0, 2.8, 3.2, 1.8, 2.6, 1.4, 1.0, 0.8): 0.6, 1.8, 2.2, 2.0, 0.8, 0.2 -> 1.3
NOISE = 1.3 / (0.6745 * np.sqrt(6))


def test_debiased_ema_is_the_normalized_weighted_mean_of_the_losses_so_far():
    losses = np.random.default_rng(0).uniform(1, 3, size=40)
    for beta in (0.0, 0.5, 0.98):
        smoothed = debiased_ema(losses, beta)
        for t in range(1, 41):
            weights = (1 - beta) * beta ** np.arange(t - 1, -1, -1)
            assert np.isclose(smoothed[t - 1], weights @ losses[:t] / weights.sum(), rtol=1e-12, atol=0)
    # the first value is the first loss itself (a biased average from zero would give 0.02 * loss)
    assert debiased_ema(losses, 0.98)[0] == losses[0]


def test_loss_noise_is_the_median_absolute_second_difference_scaled_to_one_loss_deviation():
    assert np.isclose(loss_noise(LOSSES[1:9]), NOISE, rtol=1e-12, atol=0)
    noise = np.random.default_rng(1).normal(0.0, 0.3, size=200_000)
    assert abs(loss_noise(np.linspace(10.0, 0.0, 200_000) + noise) / 0.3 - 1) < 0.01  # the trend drops out
    assert loss_noise(np.array([5.0, 4.0, 3.0, 2.0])) == 0.0  # a straight fall is no noise


def test_the_rule_on_a_hand_computed_curve():
    # after the skipped first update the minimum is at 1e3 (index 8): a tenth of it; the fall 3.1 - 0.9
    # exceeds the noise of LOSSES[1:9], 0.79
    assert suggest(RATES, LOSSES, SMOOTHED, skip=1) == ({"minimum/10": 100.0}, "")


def test_a_fall_within_the_noise_of_the_loss_suggests_nothing():
    noisy = LOSSES + 2.0 * (-1.0) ** np.arange(10)  # |second differences| near 8: noise 4.8, the fall is 2.2
    noise = np.median(np.abs(np.diff(noisy[1:9], n=2))) / (0.6745 * np.sqrt(6))
    assert suggest(RATES, noisy, SMOOTHED, skip=1) == (
        {}, f"it fell by 2.2 to its lowest value, no more than the loss varies from one update to the next "
            f"({noise:.3g})")


def test_a_minimum_among_the_first_three_usable_updates_suggests_nothing():
    rising = np.array([9.0, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 7.0, 9.0])
    assert suggest(RATES, rising, rising, skip=1) == (
        {}, "its lowest value is at update 2 (rate 0.0001), among the first 3 the rule reads")
    zero = np.zeros(10)  # a loss of exactly 0: no fall at all
    assert suggest(RATES, zero, zero, skip=1) == (
        {}, "its lowest value is at update 2 (rate 0.0001), among the first 3 the rule reads")


def test_non_finite_losses_end_the_usable_part():
    smoothed = SMOOTHED.copy()
    smoothed[5] = np.nan  # only 2.0 at index 4 after 3.1, 2.9, 3.0: the minimum is at 1e-1
    assert suggest(RATES, LOSSES, smoothed, skip=1) == ({"minimum/10": 1e-2}, "")


def test_fewer_than_three_usable_updates_suggest_nothing():
    curve = np.array([2.0, 1.0, np.inf, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    assert suggest(RATES, curve, curve, skip=0) == ({}, "only 2 usable updates")
    assert suggest(RATES[:3], np.array([3.0, 2.0, 1.0]), np.array([3.0, 2.0, 1.0]), skip=1) == (
        {}, "only 2 usable updates")
