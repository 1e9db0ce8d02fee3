"""Exact gradient accumulation inside Keras' own `Model.fit`: `fit_accumulated` and its window.

`fit.py` is the entry point (`keras_trainx.fit_accumulated`): it installs the window function and
runs the model's own `fit`. `window.py` compiles one accumulation window (micro-steps, then one
update); `accumulators.py` holds its per-replica sums, `loss_normalization.py` the count each part
of a micro-batch's loss is divided by, `loss_divisor.py` the hook a custom `compute_loss` reports its
count with, `window_metrics.py` the loss `fit` reports and `noise_scale.py` the gradient noise scale the
windows measure. The private Keras names they need are in `keras_trainx/compat.py`, each with why.
"""

from keras_trainx.accumulation.fit import fit_accumulated
from keras_trainx.accumulation.loss_divisor import set_loss_divisor
from keras_trainx.accumulation.noise_scale import GradientNoiseScale
from keras_trainx.accumulation.window import WindowStatistics, WindowStep

__all__ = ["GradientNoiseScale", "WindowStatistics", "WindowStep", "fit_accumulated", "set_loss_divisor"]
