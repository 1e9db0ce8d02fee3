"""`WarmUp`: a linear or exponential ramp in front of any schedule or constant learning rate."""

from typing import Any

import keras
from keras import ops

from keras_trainx.schedules.step_rules import check_step_count, saturated_rate, valid_step
from keras_trainx.validation import check_bool, check_choice, check_float, check_int

_MODES = ("linear", "exponential")


@keras.saving.register_keras_serializable(package="keras_trainx")
class WarmUp(keras.optimizers.schedules.LearningRateSchedule):
    """Ramps the learning rate up for `warmup_steps` updates, then hands over to `after`.

    With `target = after(0)` (or `after` itself when it is a float), `start = initial_learning_rate`
    or, if `initial_fraction` is given, `start = initial_fraction * target`:

    ```python
    def learning_rate(step):
        if step < warmup_steps:
            if staircase_steps:                      # hold each value for staircase_steps updates
                step = (step // staircase_steps) * staircase_steps
            fraction = step / warmup_steps
            if mode == "linear":
                return start + (target - start) * fraction
            return start * (target / start) ** fraction
        return after(step - warmup_steps) if offset else after(step)
    ```

    The branch is taken with `ops.where`, so the schedule runs in graph mode and under XLA. At call
    time the rules of `keras_trainx.schedules.step_rules` hold: a step below 0 or NaN is step 0,
    integer steps are read as int64 (an int32 counter with `warmup_steps` beyond 2**31 works), and an
    exponential ramp towards a peak of 0 is 0 after its first update.
    `after` is serialized as a Keras object: a `WarmUp` around any registered schedule (ours or
    Keras') saves and loads with the optimizer.

    **Which `offset`?** The default, `offset=True`, delays `after` by the warm-up: a decay stated as
    a length (`CosineDecay(decay_steps=total - warmup)`, `PolynomialDecay`) then runs in full after
    the ramp, as Keras' own `CosineDecay(warmup_steps=...)`, Hugging Face's
    `get_cosine_schedule_with_warmup` and PyTorch's `SequentialLR` do. A schedule stated at
    absolute steps (`MultiStepDecay` milestones, `PiecewiseConstantDecay` boundaries, "divide by 10
    at epochs 60 and 85") wants `offset=False`, which leaves those steps where they are; with
    `offset=True` they would move later by `warmup_steps`.

    Args:
        after: The schedule that follows the warm-up (any `LearningRateSchedule`) or a constant
            learning rate (a Python float).
        warmup_steps: Python int in [0, 2**63 - 1]. Number of updates spent warming up; 0 means no warm-up.
            `keras_trainx.schedules.epochs_to_steps` converts epochs.
        initial_learning_rate: Python float >= 0. The learning rate of the first update.
        mode: `"linear"`, or `"exponential"` for a log-linear (geometric) ramp, which needs a
            start > 0.
        offset: If `True` (default), `after` starts counting at the end of the warm-up
            (`after(step - warmup_steps)`); if `False` it sees the optimizer step itself
            (`after(step)`).
        initial_fraction: Python float in [0, 1], or `None` (default). If given, the first
            update's learning rate is this fraction of `target` (e.g. 0.01: start at 1% of the
            peak, whatever the peak), instead of `initial_learning_rate`, which must then be left
            at 0.
        staircase_steps: Python int in [1, warmup_steps], or `None` (default: the rate changes at
            every update). If given, the warm-up rate changes only every `staircase_steps` updates;
            with `staircase_steps = updates_per_epoch(...)` it rises once per epoch.

    Example:

    >>> import keras, keras_trainx
    >>> decay = keras.optimizers.schedules.CosineDecay(0.1, decay_steps=900)
    >>> schedule = keras_trainx.schedules.WarmUp(decay, warmup_steps=100)
    >>> [round(float(schedule(s)), 4) for s in (0, 50, 100, 1000)]
    [0.0, 0.05, 0.1, 0.0]

    The large-batch recipe of Goyal et al. with 4 updates per epoch: from 1% of the peak,
    x10**0.4 once per epoch for 5 epochs, divided by 10 at epochs 60 and 85 (absolute):

    >>> from keras_trainx.schedules import MultiStepDecay, WarmUp, epochs_to_steps
    >>> peak, per_epoch = 3.2, 4
    >>> schedule = WarmUp(MultiStepDecay(peak, epochs_to_steps([60, 85], per_epoch)),
    ...                   warmup_steps=epochs_to_steps(5, per_epoch), mode="exponential",
    ...                   initial_fraction=0.01, staircase_steps=per_epoch, offset=False)
    >>> [round(float(schedule(s)), 4) for s in (0, 3, 4, 8, 19, 20, 239, 240, 340)]
    [0.032, 0.032, 0.0804, 0.2019, 1.2739, 3.2, 3.2, 0.32, 0.032]
    """

    def __init__(self, after: keras.optimizers.schedules.LearningRateSchedule | float, warmup_steps: int,
                 initial_learning_rate: float = 0.0, mode: str = "linear", offset: bool = True,
                 initial_fraction: float | None = None, staircase_steps: int | None = None) -> None:
        super().__init__()
        if isinstance(after, dict):
            raise TypeError(
                "`after` is a config dict; pass a schedule object, or rebuild it with "
                "`WarmUp.from_config(...)`/`keras.saving.deserialize_keras_object(...)`."
            )
        if not isinstance(after, keras.optimizers.schedules.LearningRateSchedule):
            after = check_float("after", after, minimum=0.0)
        warmup_steps = check_step_count("warmup_steps", warmup_steps, minimum=0)
        mode = check_choice("mode", mode, _MODES)
        initial_learning_rate = check_float("initial_learning_rate", initial_learning_rate, minimum=0.0)
        if initial_fraction is not None:
            initial_fraction = check_float("initial_fraction", initial_fraction, minimum=0.0, maximum=1.0)
            if initial_learning_rate != 0.0:
                raise ValueError(
                    "Pass either `initial_learning_rate` (absolute) or `initial_fraction` (of the "
                    f"peak), not both; received initial_learning_rate={initial_learning_rate}, "
                    f"initial_fraction={initial_fraction}."
                )
        start, start_name = ((initial_fraction, "initial_fraction") if initial_fraction is not None
                             else (initial_learning_rate, "initial_learning_rate"))
        if mode == "exponential" and start <= 0.0:
            raise ValueError(
                f"`{start_name}` must be > 0 with mode='exponential' (a geometric ramp cannot "
                f"start at 0); received {start_name}={start}."
            )
        if staircase_steps is not None:
            staircase_steps = check_int(
                "staircase_steps", staircase_steps, minimum=1, maximum=max(warmup_steps, 1),
                hint="A stair cannot be longer than the warm-up (`warmup_steps`).",
            )
        self.after = after
        self.warmup_steps = warmup_steps
        self.initial_learning_rate = initial_learning_rate
        self.mode = mode
        self.offset = check_bool("offset", offset)
        self.initial_fraction = initial_fraction
        self.staircase_steps = staircase_steps

    def _after(self, step: Any) -> Any:
        if isinstance(self.after, float):
            return ops.convert_to_tensor(self.after, "float32")
        return ops.cast(self.after(step), "float32")

    def __call__(self, step: Any) -> Any:
        step = valid_step(step)
        warmup_steps = ops.cast(self.warmup_steps, step.dtype)
        after_step = ops.maximum(step - warmup_steps, 0) if self.offset else step
        decayed = self._after(after_step)
        target = self._after(ops.zeros_like(step))
        if self.initial_fraction is None:
            initial = ops.convert_to_tensor(self.initial_learning_rate, "float32")
        else:
            initial = self.initial_fraction * target
        progress = step
        if self.staircase_steps is not None:  # in the step's own dtype: int64 stairs are exact at any step
            stair = ops.cast(self.staircase_steps, step.dtype)
            progress = ops.floor_divide(step, stair) * stair
        fraction = ops.cast(ops.cast(progress, "float64") / float(max(self.warmup_steps, 1)), "float32")
        if self.mode == "linear":
            warming = initial + (target - initial) * fraction
        else:  # towards a peak of 0 the geometric ramp is 0 after its first update (its limit), not 0/0
            positive = initial > 0
            ratio = target / ops.where(positive, initial, ops.ones_like(initial))
            warming = ops.where(positive, initial * ops.power(ratio, fraction), ops.zeros_like(initial))
        return saturated_rate(ops.where(step < warmup_steps, warming, decayed))

    def get_config(self) -> dict[str, Any]:
        return {
            "after": self.after if isinstance(self.after, float) else keras.saving.serialize_keras_object(self.after),
            "warmup_steps": self.warmup_steps,
            "initial_learning_rate": self.initial_learning_rate,
            "mode": self.mode,
            "offset": self.offset,
            "initial_fraction": self.initial_fraction,
            "staircase_steps": self.staircase_steps,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "WarmUp":
        config = dict(config)
        if "after" not in config:
            raise TypeError(
                "A WarmUp config must hold `after` (the schedule or constant learning rate after the "
                f"warm-up); received a config with the keys {sorted(config)}."
            )
        if isinstance(config["after"], dict):
            config["after"] = keras.optimizers.schedules.deserialize(config["after"])
        return cls(**config)
