"""`GradientNoiseScale`: the simple gradient noise scale, measured from the accumulation windows.

McCandlish et al. (2018), "An Empirical Model of Large-Batch Training": the batch size beyond which
larger batches stop paying is about `B_simple = tr(Sigma) / |G|^2`, with `G` the true gradient and
`Sigma` the per-sample gradient covariance. A window of `fit_accumulated` already holds gradients at
two batch sizes: each micro-batch's (`b_i` samples) and the window's (`B`). Since
`E|g_b|^2 = |G|^2 + tr(Sigma) / b`, the two give unbiased estimates of both (their appendix A):

    a = mean_i |g_i|^2,  h = mean_i 1/b_i
    tr(Sigma) = (a - |G_B|^2) / (h - 1/B),     |G|^2 = |G_B|^2 - tr(Sigma) / B

Each (measured) update yields one estimate of each; they are smoothed separately with a
bias-corrected exponential moving average, and `B_simple` is the ratio of the smoothed values (a ratio
of noisy estimates averaged would be biased). Under `tf.distribute` each replica estimates from its own
micro-batches and its own share of the window (no extra communication); the estimates are averaged
over replicas, so they stay unbiased, at a smaller small batch than on one device.
"""

import math
import warnings
from typing import Any

import keras
import numpy as np

from keras_trainx.validation import check_float, check_int


class GradientNoiseScale(keras.callbacks.Callback):
    """Reports the gradient noise scale `B_simple` while `fit_accumulated` trains.

    Pass it in `callbacks` of `keras_trainx.fit_accumulated` with `accum_steps >= 2`: every
    `every`-th update then also computes the squared norms of its micro-batch gradients and of its
    window gradient, and each epoch's logs (so `History`) gain `gradient_noise_scale`, the smoothed
    `tr(Sigma) / |G|^2` at the epoch's end. The statistics add a few small ops per micro-step and
    per update: lost in the arithmetic of a compute-bound model, a few percent of the time of a
    small, dispatch-bound one (docs/benchmarks.md); `every=n` runs them in one update of n.
    Compare `B_simple` with the effective batch: well below `B_simple`, doubling the batch nearly
    halves the updates an epoch of progress needs; well above it, larger batches mostly waste
    samples. `inf` means the smoothed `|G|^2` is not positive yet (the noise hides the gradient).

    Args:
        smoothing: the moving average's decay per measured update, in [0, 1). 0 reports the last
            measured update's estimate alone.
        every: measure one update in `every` (a positive int): the updates 0, every, 2 * every, ...
            of each `fit_accumulated` call (counted from 0) compute the statistics, the others train
            without them. The estimator is the same, over the measured updates only: each gives one
            unbiased estimate of `tr(Sigma)` and of `|G|^2` from its own window, and the moving
            averages fold in those estimates alone (`smoothing` decays per measured update), so the
            result equals that of `every=1` on a run whose updates were only the measured ones. An
            update of a single micro-batch gives no estimate, as with `every=1`.

    Attributes:
        trace: the smoothed estimate of `tr(Sigma)` (NaN before the first estimate).
        squared_gradient: the smoothed estimate of `|G|^2`.
        updates: how many (measured) updates gave an estimate.

    Example:

    >>> import numpy as np, keras, keras_trainx
    >>> from keras_trainx.planning import GradientNoiseScale
    >>> keras.utils.set_random_seed(0)
    >>> x = np.random.normal(size=(256, 4)).astype("float32")
    >>> y = x @ np.ones((4, 1), "float32") + np.random.normal(size=(256, 1)).astype("float32")
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    >>> model.compile(optimizer="sgd", loss="mse")
    >>> history = keras_trainx.fit_accumulated(model, x, y, batch_size=16, accum_steps=4,
    ...                                        callbacks=[GradientNoiseScale()], verbose=0)
    >>> "gradient_noise_scale" in history.history
    True
    """

    def __init__(self, smoothing: float = 0.95, every: int = 1) -> None:
        super().__init__()
        self.smoothing = check_float("smoothing", smoothing, minimum=0.0, maximum=1.0,
                                     exclusive_maximum=True)
        self.every = check_int("every", every, minimum=1, hint="Use 1 to measure every update.")
        self._trace_sum = 0.0
        self._gradient_sum = 0.0
        self.updates = 0
        self._seen = 0
        self._armed = False
        self._warned = False

    def attach(self, armed: bool) -> None:
        """Called by `fit_accumulated` around the run it measures."""
        self._armed = armed

    def on_train_begin(self, logs: dict | None = None) -> None:
        if not self._armed:
            raise RuntimeError(
                "GradientNoiseScale measures the windows of keras_trainx.fit_accumulated; it has "
                "nothing to measure in model.fit. Pass it to fit_accumulated(..., accum_steps>=2)."
            )
        self._trace_sum = self._gradient_sum = 0.0
        self.updates = self._seen = 0
        self._warned = False

    def measures_next(self) -> bool:
        """Whether the next update is one that `every` measures (`fit_accumulated` asks before each)."""
        return self._seen % self.every == 0

    def update(self, statistics: np.ndarray, names: Any) -> None:
        """Called after every update with its window's statistics vector; folds in a measured one's estimates.

        Each replica's row (`names.noise_rows`) gives one estimate of each quantity (`window_estimates`);
        the valid ones are averaged over replicas.
        """
        measured = self.measures_next()
        self._seen += 1
        if not measured:
            return
        estimates = [e for e in (window_estimates(*row) for row in names.noise_rows(statistics)) if e is not None]
        if not estimates:
            return  # a window of a single micro-batch: no second batch size
        trace, gradient = np.mean(estimates, axis=0)
        decay = self.smoothing
        self._trace_sum = decay * self._trace_sum + (1 - decay) * float(trace)
        self._gradient_sum = decay * self._gradient_sum + (1 - decay) * float(gradient)
        self.updates += 1

    @property
    def trace(self) -> float:
        return self._debiased(self._trace_sum)

    @property
    def squared_gradient(self) -> float:
        return self._debiased(self._gradient_sum)

    @property
    def noise_scale(self) -> float:
        """The smoothed `tr(Sigma) / |G|^2` (NaN before the first estimate, inf if `|G|^2 <= 0`)."""
        if not self.updates:
            return math.nan
        if self.squared_gradient <= 0:
            return math.inf
        return self.trace / self.squared_gradient

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is not None:
            logs["gradient_noise_scale"] = self.noise_scale
        if not self.updates and not self._warned:
            self._warned = True
            warnings.warn(
                f"GradientNoiseScale has no estimate after epoch {epoch + 1}: every window so far held a single "
                "micro-batch (accum_steps of 1 in this epoch, or less data than two micro-batches), which gives no "
                "second batch size, so gradient_noise_scale is NaN until a window holds two.", stacklevel=2)

    def get_config(self) -> dict[str, Any]:
        return {"smoothing": self.smoothing, "every": self.every}

    def _debiased(self, value: float) -> float:
        if not self.updates:
            return math.nan
        return value / (1 - self.smoothing ** self.updates)


def window_estimates(micro_half_norms: float, micro_inverse_sizes: float, micro_steps: float, samples: float,
                     window_divisor: float, window_half_norm: float) -> tuple[float, float] | None:
    """One window's unbiased estimates `(tr(Sigma), |G|^2)`, or None if it cannot give them.

    With `a` the mean of the micro-batch gradients' squared norms (`2 * micro_half_norms / micro_steps`),
    `h` the mean of their `1/b_i` and `|G_B|^2 = 2 * window_half_norm / window_divisor**2` the squared
    norm of the window gradient (`B = samples`): `E[a] = |G|^2 + tr(Sigma) h` and
    `E[|G_B|^2] = |G|^2 + tr(Sigma) / B`, solved for both. A window of one micro-batch (or of equal
    `h` and `1/B`) carries no estimate.

    Example:

    >>> window_estimates(micro_half_norms=10.0, micro_inverse_sizes=0.5, micro_steps=2.0, samples=8.0,
    ...                  window_divisor=2.0, window_half_norm=4.0)
    (64.0, -6.0)
    """
    if micro_steps <= 1 or samples <= 0:
        return None
    spread = micro_inverse_sizes / micro_steps - 1.0 / samples
    if spread <= 0:
        return None
    window = 2.0 * window_half_norm / window_divisor**2 if window_divisor else 0.0
    trace = (2.0 * micro_half_norms / micro_steps - window) / spread
    return trace, window - trace / samples
