"""`WarmUp`: a linear or exponential ramp in front of any schedule or constant learning rate."""

import keras
from keras import ops

from keras_trainx.validation import check_float, check_int

_MODES = ("linear", "exponential")


@keras.saving.register_keras_serializable(package="keras_trainx")
class WarmUp(keras.optimizers.schedules.LearningRateSchedule):
    """Ramps the learning rate up for `warmup_steps` updates, then hands over to `after`.

    With `target = after(0)` (or `after` itself when it is a float):

    ```python
    def learning_rate(step):
        if step < warmup_steps:
            fraction = step / warmup_steps
            if mode == "linear":
                return initial_learning_rate + (target - initial_learning_rate) * fraction
            return initial_learning_rate * (target / initial_learning_rate) ** fraction
        return after(step - warmup_steps) if offset else after(step)
    ```

    The branch is taken with `ops.where`, so the schedule runs in graph mode and under XLA.
    `after` is serialized as a Keras object: a `WarmUp` around any registered schedule (ours or
    Keras') saves and loads with the optimizer.

    Args:
        after: The schedule that follows the warm-up (any `LearningRateSchedule`) or a constant
            learning rate (a Python float).
        warmup_steps: Python int >= 0. Number of updates spent warming up; 0 means no warm-up.
        initial_learning_rate: Python float >= 0. The learning rate of the first update.
        mode: `"linear"`, or `"exponential"` for a log-linear (geometric) ramp, which needs
            `initial_learning_rate > 0`.
        offset: If `True`, `after` starts counting at the end of the warm-up (`after(step -
            warmup_steps)`); if `False` it sees the optimizer step itself (`after(step)`).

    Example:

    >>> import keras, keras_trainx
    >>> decay = keras.optimizers.schedules.CosineDecay(0.1, decay_steps=900)
    >>> schedule = keras_trainx.schedules.WarmUp(decay, warmup_steps=100)
    >>> [round(float(schedule(s)), 4) for s in (0, 50, 100, 1000)]
    [0.0, 0.05, 0.1, 0.0]
    """

    def __init__(self, after, warmup_steps, initial_learning_rate=0.0, mode="linear", offset=True):
        super().__init__()
        if isinstance(after, dict):
            raise TypeError(
                "`after` is a config dict; pass a schedule object, or rebuild it with "
                "`WarmUp.from_config(...)`/`keras.saving.deserialize_keras_object(...)`."
            )
        if not isinstance(after, keras.optimizers.schedules.LearningRateSchedule):
            after = check_float("after", after, minimum=0.0)
        if mode not in _MODES:
            raise ValueError(f"`mode` must be one of {_MODES}; received mode={mode!r}.")
        initial_learning_rate = check_float("initial_learning_rate", initial_learning_rate, minimum=0.0)
        if mode == "exponential" and initial_learning_rate <= 0.0:
            raise ValueError(
                "`initial_learning_rate` must be > 0 with mode='exponential' (a geometric ramp cannot "
                f"start at 0); received initial_learning_rate={initial_learning_rate}."
            )
        if not isinstance(offset, bool):
            raise TypeError(f"`offset` must be True or False; received offset={offset!r}.")
        self.after = after
        self.warmup_steps = check_int("warmup_steps", warmup_steps, minimum=0)
        self.initial_learning_rate = initial_learning_rate
        self.mode = mode
        self.offset = offset

    def _after(self, step):
        if isinstance(self.after, float):
            return ops.convert_to_tensor(self.after, "float32")
        return ops.cast(self.after(step), "float32")

    def __call__(self, step):
        step = ops.convert_to_tensor(step)
        warmup_steps = ops.cast(self.warmup_steps, step.dtype)
        after_step = ops.maximum(step - warmup_steps, 0) if self.offset else step
        decayed = self._after(after_step)
        target = self._after(ops.zeros_like(step))
        initial = ops.convert_to_tensor(self.initial_learning_rate, "float32")
        fraction = ops.cast(step, "float32") / max(self.warmup_steps, 1)
        if self.mode == "linear":
            warming = initial + (target - initial) * fraction
        else:
            warming = initial * ops.power(target / initial, fraction)
        return ops.where(step < warmup_steps, warming, decayed)

    def get_config(self):
        return {
            "after": self.after if isinstance(self.after, float) else keras.saving.serialize_keras_object(self.after),
            "warmup_steps": self.warmup_steps,
            "initial_learning_rate": self.initial_learning_rate,
            "mode": self.mode,
            "offset": self.offset,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config["after"], dict):
            config["after"] = keras.optimizers.schedules.deserialize(config["after"])
        return cls(**config)
