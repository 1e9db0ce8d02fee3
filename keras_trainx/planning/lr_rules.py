"""The smoothed loss of an LR range test and the rules that suggest a learning rate from it.

Smoothing is an exponential moving average with bias correction (as Adam corrects its moments and
fastai's `lr_find` its loss): `average_t = smoothing * average_{t-1} + (1 - smoothing) * loss_t`
from `average_0 = 0`, reported as `average_t / (1 - smoothing**t)`. So every smoothed value is a
weighted mean of the losses so far, with weights that sum to one; without the correction the first
values would be pulled towards the zero it starts from.

The rules (fastai's names and definitions; each takes the rates and smoothed losses of the updates
before divergence, after the first tenth of the planned sweep, whose averages still rest on few
losses):

- `"steepest"`: the rate where the smoothed loss falls fastest against log(rate), up to its minimum.
- `"minimum/10"`: a tenth of the rate at the smoothed loss' minimum (the minimum is where training
  starts to diverge; a tenth of it is safely below).
- `"valley"`: the rate halfway (in updates) through the longest valley, the longest strictly
  decreasing subsequence of the smoothed loss up to its minimum.
"""

from collections.abc import Callable, Sequence

import numpy as np

#: The suggestion rules, in the order results report them.
RULES = ("steepest", "minimum/10", "valley")


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


def suggest(learning_rates: np.ndarray, smoothed_losses: np.ndarray, skip: int) -> dict[str, float]:
    """The learning rate each rule of `RULES` suggests.

    Args:
        learning_rates: the rates of the updates, increasing.
        smoothed_losses: their smoothed losses; non-finite values end the usable part.
        skip: leading updates to leave out (their averages rest on few losses).

    Returns:
        `{rule: rate}` in the order of `RULES`; empty when fewer than 3 updates are usable.

    Example:

    >>> rates = np.array([1e-3, 1e-2, 1e-1, 1.0, 10.0])
    >>> suggest(rates, np.array([5.0, 4.0, 1.0, 0.5, 2.0]), skip=0)
    {'steepest': 0.01, 'minimum/10': 0.1, 'valley': 0.01}
    """
    finite = np.isfinite(smoothed_losses)
    end = int(np.argmin(finite)) if not finite.all() else len(smoothed_losses)
    rates, losses = learning_rates[skip:end], smoothed_losses[skip:end]
    if len(losses) < 3:
        return {}
    lowest = int(np.argmin(losses))
    rates, losses = rates[:lowest + 1], losses[:lowest + 1]
    rules: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
        "steepest": _steepest, "minimum/10": _minimum_over_10, "valley": _valley,
    }
    return {name: rules[name](rates, losses) for name in RULES}


def _steepest(rates: np.ndarray, losses: np.ndarray) -> float:
    if len(losses) < 2:
        return float(rates[0])
    slopes = np.diff(losses) / np.diff(np.log(rates))
    return float(rates[int(np.argmin(slopes))])


def _minimum_over_10(rates: np.ndarray, losses: np.ndarray) -> float:
    return float(rates[-1]) / 10.0


def _valley(rates: np.ndarray, losses: np.ndarray) -> float:
    """Halfway through the longest strictly decreasing subsequence (first index on ties)."""
    length = np.ones(len(losses), dtype=int)
    first = np.arange(len(losses))
    for i in range(1, len(losses)):
        for j in range(i):
            if losses[i] < losses[j] and length[j] + 1 > length[i]:
                length[i], first[i] = length[j] + 1, first[j]
    end = int(np.argmax(length))
    return float(rates[(int(first[end]) + end) // 2])
