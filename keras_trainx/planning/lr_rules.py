"""The smoothed loss of an LR range test and the rules that suggest a learning rate from it.

Smoothing is an exponential moving average with bias correction (as Adam corrects its moments and
fastai's `lr_find` its loss): `average_t = smoothing * average_{t-1} + (1 - smoothing) * loss_t`
from `average_0 = 0`, reported as `average_t / (1 - smoothing**t)`. So every smoothed value is a
weighted mean of the losses so far, with weights that sum to one; without the correction the first
values would be pulled towards the zero it starts from.

The rule, `"minimum/10"` (fastai's name and definition): a tenth of the rate at the smoothed loss'
minimum (the minimum is where training starts to diverge; a tenth of it is safely below). It reads
the rates and smoothed losses of the updates before divergence, after the first tenth of the
planned sweep, whose averages still rest on few losses; it suggests nothing when the minimum lies
among the first 3 of those updates (the loss did not fall before it turned).

fastai's `"steepest"` (where the smoothed loss falls fastest against log(rate)) and `"valley"`
(halfway through the longest decreasing stretch) are not offered: on least squares with the
default sweep they left the stable range `[0.1/L, 2/L)` (L the Hessian's largest eigenvalue):
"steepest" reached 2.47/L at condition number 100, since the heavily smoothed loss falls fastest
after the raw loss has; "valley" gave 0.009-0.04/L, halfway (in log rate) between
`min_learning_rate` and the minimum whenever the loss falls at every update, a place set by
`min_learning_rate` rather than by the model. "minimum/10" landed at 1.29-1.59/L there
(tests/test_planning_lr_range_test.py).
"""

from collections.abc import Sequence

import numpy as np

#: The suggestion rules, in the order results report them.
RULES = ("minimum/10",)


def debiased_ema(losses: Sequence[float] | np.ndarray, smoothing: float) -> np.ndarray:
    """The bias-corrected exponential moving average of `losses`.

    Args:
        losses: the per-update losses, in order.
        smoothing: the weight of the past, in `[0, 1)`; 0 returns the losses unchanged.

    Example:

    >>> debiased_ema([2.0, 2.0, 2.0], 0.5).tolist()  # a constant stays constant
    [2.0, 2.0, 2.0]
    >>> debiased_ema([1.0, 4.0], 0.5).tolist()  # weights 1/3, 2/3: (0.5 * 1 + 1 * 4) / 1.5
    [1.0, 3.0]
    """
    smoothed = np.empty(len(losses))
    average = 0.0
    for step, loss in enumerate(losses, start=1):
        average = smoothing * average + (1.0 - smoothing) * float(loss)
        smoothed[step - 1] = average / (1.0 - smoothing**step)
    return smoothed


def suggest(learning_rates: np.ndarray, losses: np.ndarray, smoothed_losses: np.ndarray,
            skip: int) -> tuple[dict[str, float], str]:
    """The learning rate each rule of `RULES` suggests, or why the curve supports none.

    The rules read the usable updates: after the first `skip`, up to the first non-finite
    smoothed loss. They need the smoothed loss to fall before its minimum: the minimum must come
    after the first 3 usable updates, and the fall from the first usable value to the minimum
    must exceed the noise of the raw loss (`loss_noise` over the same updates), else a
    minimum that noise placed would pass for a turn.

    Args:
        learning_rates: the rates of the updates, increasing.
        losses: the raw losses of the updates.
        smoothed_losses: their smoothed losses; non-finite values end the usable part.
        skip: leading updates to leave out (their averages rest on few losses).

    Returns:
        `({rule: rate}, "")` in the order of `RULES`, or `({}, why)`: why starts with "only"
        when fewer than 3 updates are usable, else says how the smoothed loss failed to fall.

    Example:

    >>> rates = np.array([1e-3, 1e-2, 1e-1, 1.0, 10.0])
    >>> suggest(rates, np.array([5.0, 3.0, 1.0, 0.5, 9.0]), np.array([5.0, 4.0, 1.0, 0.5, 2.0]), skip=0)
    ({'minimum/10': 0.1}, '')
    >>> suggest(rates, np.array([5.0, 6.0, 7.0, 9.0, 9.0]), np.array([5.0, 5.5, 6.0, 7.0, 9.0]), skip=0)
    ({}, 'its lowest value is at update 1 (rate 0.001), among the first 3 the rule reads')
    """
    finite = np.isfinite(smoothed_losses)
    end = int(np.argmin(finite)) if not finite.all() else len(smoothed_losses)
    rates, smoothed = learning_rates[skip:end], smoothed_losses[skip:end]
    if len(smoothed) < 3:
        return {}, f"only {len(smoothed)} usable updates"
    lowest = int(np.argmin(smoothed))
    if lowest < 2:
        return {}, (f"its lowest value is at update {skip + lowest + 1} (rate {rates[lowest]:.3g}), among the "
                    "first 3 the rule reads")
    fall, noise = smoothed[0] - smoothed[lowest], loss_noise(losses[skip:skip + lowest + 1])
    if fall <= noise:
        return {}, (f"it fell by {fall:.3g} to its lowest value, no more than the loss varies from one update "
                    f"to the next ({noise:.3g})")
    return {"minimum/10": float(rates[lowest]) / 10.0}, ""


def loss_noise(losses: np.ndarray) -> float:
    """The update-to-update noise of `losses`: the standard deviation of one loss, estimated from the
    median absolute second difference of consecutive losses (a straight stretch of the curve drops
    out, and outliers barely count): `median(|losses[i] - 2 losses[i+1] + losses[i+2]|) / (0.6745 *
    sqrt(6))`, exact for independent normal noise (a second difference has variance 6 sigma^2).

    Example:

    >>> losses = np.linspace(9.0, 5.0, 10_000) + np.random.default_rng(0).normal(0.0, 0.1, size=10_000)
    >>> round(loss_noise(losses), 2)
    0.1
    """
    return float(np.median(np.abs(np.diff(losses, n=2))) / (0.6745 * np.sqrt(6.0)))
