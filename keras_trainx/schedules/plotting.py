"""`values()` and `plot()`: look at any learning-rate schedule."""

from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_trainx.extras import require
from keras_trainx.schedules.cosine_restarts import CosineAnnealingWarmupRestarts
from keras_trainx.schedules.multi_step import MultiStepDecay
from keras_trainx.schedules.one_cycle import OneCycle
from keras_trainx.schedules.step_rules import MAX_STEP
from keras_trainx.schedules.warmup import WarmUp

DRAWN_STEPS = 2000  # evenly spaced steps `plot(s, n)` evaluates: more than a figure has pixels across


def _steps_array(steps: int | Sequence[int] | np.ndarray,
                 drawn: Callable[[int], np.ndarray] = np.arange) -> np.ndarray:
    """The steps to evaluate: `drawn(n)` for an int `n` (all of `0 .. n-1` by default), else `steps`."""
    if isinstance(steps, bool):
        raise TypeError(f"`steps` must be an int or a 1-D sequence of ints; received steps={steps!r} of type bool.")
    if isinstance(steps, (int, np.integer)):
        if steps < 1:
            raise ValueError(f"`steps` must be >= 1 when given as an int; received steps={steps}.")
        if steps > MAX_STEP:
            raise ValueError(f"`steps` must be <= 2**63 - 1 when given as an int (steps 0 .. n-1); received "
                             f"steps={steps}. The optimizer counts steps in int64: no step lies beyond 2**63 - 1.")
        return drawn(int(steps))
    array = np.asarray(steps)
    if array.ndim != 1 or array.size == 0 or array.dtype.kind not in "iu" or (array < 0).any():
        raise ValueError(
            f"`steps` must be an int or a non-empty 1-D sequence of non-negative ints; received {steps!r}."
        )
    if array.dtype.kind == "u" and (array > MAX_STEP).any():
        beyond = int(np.argmax(array > MAX_STEP))
        raise ValueError(
            f"`steps` must hold steps <= 2**63 - 1; received steps[{beyond}]={int(array[beyond])}. The optimizer "
            "counts steps in int64: no step lies beyond 2**63 - 1."
        )
    return array.astype(np.int64)


def values(schedule: keras.optimizers.schedules.LearningRateSchedule,
           steps: int | Sequence[int] | np.ndarray) -> np.ndarray:
    """Evaluates a schedule at each step.

    Args:
        schedule: A `keras.optimizers.schedules.LearningRateSchedule`.
        steps: A Python int `n` (steps `0 .. n-1`) or a 1-D sequence of int steps in [0, 2**63 - 1].

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


def drawn_steps(schedule: keras.optimizers.schedules.LearningRateSchedule, n: int) -> np.ndarray:
    """The steps `plot(schedule, n)` evaluates: where the curve of steps `0 .. n-1` is drawn.

    All `n` steps when `n <= DRAWN_STEPS`; else `DRAWN_STEPS` evenly spaced steps (the first and the
    last included) plus, around each step where the schedule jumps or bends (`b - 1`, `b`, `b + 1`),
    its milestones, warm-up ends and stairs, cycle starts, one-cycle peak, and Keras'
    `PiecewiseConstantDecay` boundaries, as long as there are no more of those than `DRAWN_STEPS`
    (denser than that, they are finer than the drawing). The cost depends on `DRAWN_STEPS`, not `n`.

    Example:

    >>> from keras_trainx.schedules import MultiStepDecay
    >>> steps = drawn_steps(MultiStepDecay(0.1, [5_000_001]), 10**7)
    >>> len(steps), steps[0], steps[-1], [s for s in steps if 5_000_000 <= s <= 5_000_002]
    (2003, np.int64(0), np.int64(9999999), [np.int64(5000000), np.int64(5000001), np.int64(5000002)])
    """
    if n <= DRAWN_STEPS:
        return np.arange(n)
    # `round(i * (n - 1) / (DRAWN_STEPS - 1))` in Python ints: exact for any n (float64 would round a
    # step past 2**53 and could draw step n itself)
    span, intervals = n - 1, DRAWN_STEPS - 1
    grid = np.array([(2 * i * span + intervals) // (2 * intervals) for i in range(DRAWN_STEPS)], np.int64)
    edges = np.asarray([edge for edge in _breakpoints(schedule, n) if edge < n], np.int64)
    if len(edges) > DRAWN_STEPS:
        return grid
    around = (edges[:, None] + np.array([-1, 0, 1])).ravel()
    return np.union1d(grid, around[(around >= 0) & (around < n)])


def _breakpoints(schedule: Any, n: int) -> list[int]:
    """Steps below `n` where `schedule` jumps or bends (at most `DRAWN_STEPS + 1` are listed)."""
    if isinstance(schedule, MultiStepDecay):
        return [m for m in schedule.milestones if m < n]
    if isinstance(schedule, OneCycle):
        peak = schedule.pct_start * schedule.total_steps - 1
        return [int(np.floor(peak)), int(np.ceil(peak)), schedule.total_steps - 1]
    if isinstance(schedule, WarmUp):
        stair = schedule.staircase_steps or schedule.warmup_steps
        edges = list(range(stair, min(schedule.warmup_steps, n) + 1, stair))[:DRAWN_STEPS + 1] if stair else []
        shift = schedule.warmup_steps if schedule.offset else 0
        after = [] if isinstance(schedule.after, float) else _breakpoints(schedule.after, n - shift)
        return edges + [b + shift for b in after][:DRAWN_STEPS + 1 - len(edges)]
    if isinstance(schedule, CosineAnnealingWarmupRestarts):
        starts = [s for s in schedule._starts[:DRAWN_STEPS + 1] if s < n]
        start, length = schedule._starts[-1], schedule._lengths[-1]  # the last cycle's length repeats
        while start + length < n and len(starts) <= DRAWN_STEPS:
            start += length
            starts.append(start)
        return [edge for start in starts for edge in (start, start + schedule.warmup_steps)]
    if isinstance(schedule, keras.optimizers.schedules.PiecewiseConstantDecay):
        return [int(b) for b in schedule.boundaries if b < n]
    return []


def plot(schedule: keras.optimizers.schedules.LearningRateSchedule, steps: int | Sequence[int] | np.ndarray,
         ax: Any = None) -> Any:
    """Plots a schedule's learning rate against the step.

    Args:
        schedule: A `keras.optimizers.schedules.LearningRateSchedule`.
        steps: A Python int `n` (steps `0 .. n-1`, evaluated where they are drawn: see
            `drawn_steps`) or a 1-D sequence of non-negative int steps (each one evaluated).
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
    xs = _steps_array(steps, drawn=lambda n: drawn_steps(schedule, n))
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
