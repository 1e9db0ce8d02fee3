"""`CosineAnnealingWarmupRestarts`: cosine cycles with linear warm-up and growing, decaying restarts."""

import math
from typing import Any

import keras
import numpy as np
from keras import ops

from keras_trainx.schedules.step_rules import FLOAT32_MAX, MAX_STEP, check_step_count, saturated_rate, valid_step
from keras_trainx.validation import check_float, renamed_argument

MAX_CYCLES = 100_000  # the cycle table's bound: past its last cycle, that cycle's length repeats


@keras.saving.register_keras_serializable(package="keras_trainx")
class CosineAnnealingWarmupRestarts(keras.optimizers.schedules.LearningRateSchedule):
    """Cosine annealing with a linear warm-up at the start of every cycle.

    The learning rate of the PyTorch scheduler of that name
    (github.com/katsura-jp/pytorch-cosine-annealing-with-warmup) stepped once per update:

    ```python
    # cycle lengths: L[0] = first_cycle_steps, L[c + 1] = floor((L[c] - warmup_steps) * cycle_mult) + warmup_steps
    def learning_rate(step):
        c, t = cycle and position of `step` (cycles laid end to end)
        peak = max_learning_rate * gamma ** c
        low = min_learning_rate
        if t < warmup_steps:
            return low + (peak - low) * t / warmup_steps
        p = (t - warmup_steps) / (L[c] - warmup_steps)
        return low + (peak - low) * (1 + cos(pi * p)) / 2
    ```

    With `warmup_steps=0` the first update uses `max_learning_rate` (the torch class sets the optimizer
    to its `min_lr` for its very first update only, an artefact of its constructor). The cycle
    boundaries are laid out once, at construction, up to step 2**63 - 1 (the last step of the
    optimizer's int64 counter), or up to the cycle from which `floor` keeps the length constant, or
    up to `MAX_CYCLES` (100,000) cycles, whichever comes first; past the table's last cycle that
    cycle's length repeats. A call compares the step with the table, so its cost does not grow with
    the step, in graph mode and under XLA. The bound only matters for a `cycle_mult` just above 1 with
    long cycles (more than 100,000 growing cycles need cycles of at least ~7,700 steps, so the table
    then reaches past step 7.7e8). A call counts the step's cycle and position in int64, exactly at
    every step (a first cycle of 2**62 steps is at half its peak at step 2**61), and divides in
    float64. At call time a step below 0 or NaN is step 0, +inf is step 2**63 - 1, and a peak beyond
    float32's range (`gamma > 1` over many cycles) saturates at float32's largest value
    (`keras_trainx.schedules.step_rules`).

    Args:
        first_cycle_steps: Python int in [1, 2**63 - 1]. Length of the first cycle, warm-up included.
        cycle_mult: Python float >= 1. Growth factor of the cosine part from one cycle to the next.
        max_learning_rate: Python float >= 0. Peak learning rate of the first cycle.
        min_learning_rate: Python float in [0, max_learning_rate]. Learning rate at the start of each
            warm-up and the end of each cycle.
        warmup_steps: Python int in [0, first_cycle_steps). Linear warm-up steps of every cycle.
        gamma: Python float > 0. The peak of cycle `c` is `max_learning_rate * gamma ** c`.
        max_lr, min_lr: the deprecated names of `max_learning_rate` and `min_learning_rate` (the
            torch class's, and this class's in keras_trainx 0.1.0): accepted with a `DeprecationWarning`, so
            configs saved with them still load.

    Example:

    >>> import keras_trainx
    >>> schedule = keras_trainx.schedules.CosineAnnealingWarmupRestarts(
    ...     first_cycle_steps=100, max_learning_rate=0.1, min_learning_rate=0.001, warmup_steps=10,
    ...     gamma=0.5)
    >>> [round(float(schedule(s)), 6) for s in (0, 10, 100, 110)]
    [0.001, 0.1, 0.001, 0.05]
    """

    def __init__(self, first_cycle_steps: int, cycle_mult: float = 1.0, max_learning_rate: float = 0.1,
                 min_learning_rate: float = 0.001, warmup_steps: int = 0, gamma: float = 1.0, *,
                 max_lr: float | None = None, min_lr: float | None = None) -> None:
        super().__init__()
        name = type(self).__name__
        max_learning_rate = renamed_argument(name, "max_lr", max_lr, "max_learning_rate", max_learning_rate, 0.1)
        min_learning_rate = renamed_argument(name, "min_lr", min_lr, "min_learning_rate", min_learning_rate, 0.001)
        self.first_cycle_steps = check_step_count("first_cycle_steps", first_cycle_steps, minimum=1)
        self.cycle_mult = check_float("cycle_mult", cycle_mult, minimum=1.0)
        self.max_learning_rate = check_float("max_learning_rate", max_learning_rate, minimum=0.0)
        self.min_learning_rate = check_float(
            "min_learning_rate", min_learning_rate, minimum=0.0, maximum=self.max_learning_rate,
            hint="Each cycle anneals from its peak max_learning_rate down to min_learning_rate.")
        self.warmup_steps = check_step_count("warmup_steps", warmup_steps, minimum=0)
        if self.warmup_steps >= self.first_cycle_steps:
            raise ValueError(
                "`warmup_steps` must be < `first_cycle_steps` (each cycle needs a cosine part); received "
                f"warmup_steps={warmup_steps}, first_cycle_steps={first_cycle_steps}."
            )
        self.gamma = check_float("gamma", gamma, minimum=0.0, exclusive_minimum=True)
        self._starts, self._lengths = self._cycle_table()
        # the table as a call reads it: a length past MAX_STEP only ever holds steps below it, so MAX_STEP
        # stands for it in the division; the cosine parts' lengths, float64, divide the position
        self._table = (np.array(self._starts, np.int64),
                       np.array([min(length, MAX_STEP) for length in self._lengths], np.int64),
                       np.array([float(length - self.warmup_steps) for length in self._lengths], np.float64))

    def _cycle_table(self) -> tuple[list[int], list[int]]:
        """Start and length of every cycle starting up to `MAX_STEP` (`MAX_CYCLES` at most); the last one's
        length repeats."""
        starts, lengths = [0], [self.first_cycle_steps]
        while starts[-1] + lengths[-1] <= MAX_STEP and len(starts) < MAX_CYCLES:
            following = math.floor((lengths[-1] - self.warmup_steps) * self.cycle_mult) + self.warmup_steps
            if following == lengths[-1]:
                break
            starts.append(starts[-1] + lengths[-1])
            lengths.append(following)
        return starts, lengths

    def _locate(self, step: Any) -> tuple[Any, Any, Any]:
        """Returns (cycle, (position, fraction), length of the cycle's cosine part) of `step`.

        The cycle and the position (whole steps into the cycle) are int64 tensors, exact at every step
        up to `MAX_STEP`; the fraction a float step has beyond its whole steps and the cosine part's
        length are float64 tensors.
        """
        whole, fraction = _whole_and_fraction(step)
        starts, lengths, cosine_lengths = (ops.convert_to_tensor(column) for column in self._table)
        index = ops.sum(ops.cast(starts <= whole, "int32")) - 1
        start, length = ops.take(starts, index), ops.take(lengths, index)
        repeats = ops.floor_divide(whole - start, length)  # 0 except past the table's last start
        cycle = ops.cast(index, "int64") + repeats
        position = whole - start - repeats * length
        return cycle, (position, fraction), ops.take(cosine_lengths, index)

    def __call__(self, step: Any) -> Any:
        cycle, (position, fraction), cosine_length = self._locate(step)
        warmup = self.warmup_steps
        warmed = (ops.cast(position, "float64") + fraction) / float(max(warmup, 1))
        annealed_part = (ops.cast(position - warmup, "float64") + fraction) / cosine_length
        peak = ops.minimum(
            self.max_learning_rate * ops.power(ops.convert_to_tensor(self.gamma, "float32"),
                                               ops.cast(cycle, "float32")),
            FLOAT32_MAX)
        low = self.min_learning_rate
        warming = low + (peak - low) * ops.cast(warmed, "float32")
        annealed = low + (peak - low) * ((1.0 + ops.cos(math.pi * ops.cast(annealed_part, "float32"))) / 2.0)
        return saturated_rate(ops.where(position < warmup, warming, annealed))

    def get_config(self) -> dict[str, Any]:
        return {
            "first_cycle_steps": self.first_cycle_steps,
            "cycle_mult": self.cycle_mult,
            "max_learning_rate": self.max_learning_rate,
            "min_learning_rate": self.min_learning_rate,
            "warmup_steps": self.warmup_steps,
            "gamma": self.gamma,
        }


def _whole_and_fraction(step: Any) -> tuple[Any, Any]:
    """`step` (`valid_step`'s) as its whole steps, an int64 tensor, and the fraction beyond them, float64.

    A float step from 2**63 on, +inf included, is `MAX_STEP`.
    """
    step = valid_step(step)
    if "int" in keras.backend.standardize_dtype(step.dtype):
        return step, ops.zeros_like(step, "float64")
    step = ops.cast(step, "float64")
    beyond = step >= 2.0**63
    kept = ops.floor(ops.where(beyond, ops.zeros_like(step), step))
    whole = ops.where(beyond, ops.full_like(step, MAX_STEP, "int64"), ops.cast(kept, "int64"))
    return whole, ops.where(beyond, ops.zeros_like(step), step - kept)
