"""`values()` and `plot()`: look at any learning-rate schedule."""

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_trainx.extras import require


def _steps_array(steps: int | Sequence[int] | np.ndarray) -> np.ndarray:
    if isinstance(steps, bool):
        raise TypeError(f"`steps` must be an int or a 1-D sequence of ints; received steps={steps!r} of type bool.")
    if isinstance(steps, (int, np.integer)):
        if steps < 1:
            raise ValueError(f"`steps` must be >= 1 when given as an int; received steps={steps}.")
        return np.arange(steps)
    array = np.asarray(steps)
    if array.ndim != 1 or array.size == 0 or array.dtype.kind not in "iu" or (array < 0).any():
        raise ValueError(
            f"`steps` must be an int or a non-empty 1-D sequence of non-negative ints; received {steps!r}."
        )
    return array


def values(schedule: keras.optimizers.schedules.LearningRateSchedule,
           steps: int | Sequence[int] | np.ndarray) -> np.ndarray:
    """Evaluates a schedule at each step.

    Args:
        schedule: A `keras.optimizers.schedules.LearningRateSchedule`.
        steps: A Python int `n` (steps `0 .. n-1`) or a 1-D sequence of non-negative int steps.

    Returns:
        A float64 numpy array with one learning rate per step.

    Example:

    >>> import keras_trainx
    >>> keras_trainx.schedules.values(keras_trainx.schedules.MultiStepDecay(1.0, [2], 0.5), 4).tolist()
    [1.0, 1.0, 0.5, 0.5]
    """
    if not isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
        raise TypeError(
            f"`schedule` must be a keras.optimizers.schedules.LearningRateSchedule; received {schedule!r}."
        )
    array = _steps_array(steps)
    evaluate = tf.function(
        lambda s: tf.map_fn(lambda t: tf.cast(schedule(t), tf.float64), s, fn_output_signature=tf.float64)
    ).get_concrete_function(tf.TensorSpec([None], tf.int64))
    return evaluate(tf.constant(array, tf.int64)).numpy()


def plot(schedule: keras.optimizers.schedules.LearningRateSchedule, steps: int | Sequence[int] | np.ndarray,
         ax: Any = None) -> Any:
    """Plots a schedule's learning rate against the step.

    Args:
        schedule: A `keras.optimizers.schedules.LearningRateSchedule`.
        steps: A Python int `n` (steps `0 .. n-1`) or a 1-D sequence of non-negative int steps.
        ax: Optional matplotlib `Axes` to draw into; a new figure is made when `None`.

    Returns:
        The matplotlib `Figure` holding the plot.

    Example:

    >>> import keras_trainx
    >>> figure = keras_trainx.schedules.plot(keras_trainx.schedules.OneCycle(0.1, 100), 100)
    >>> figure.axes[0].get_lines()[0].get_ydata().max().round(4)  # figure.savefig("lr.png") saves it
    np.float64(0.1)
    """
    plt = require("matplotlib.pyplot", "keras_trainx.schedules.plot")
    xs = _steps_array(steps)
    ys = values(schedule, xs)
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    elif not isinstance(ax, require("matplotlib.axes", "keras_trainx.schedules.plot").Axes):
        raise TypeError(f"`ax` must be a matplotlib Axes or None; received ax={ax!r} of type "
                        f"{type(ax).__name__}.")
    ax.plot(xs, ys)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate")
    ax.set_title(type(schedule).__name__)
    ax.grid(True, alpha=0.3)
    return ax.figure
