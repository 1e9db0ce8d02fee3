"""`MultiStepDecay`: multiply the learning rate by `factor` at each milestone (torch's MultiStepLR)."""

from collections.abc import Sequence
from typing import Any

import keras
from keras import ops

from keras_trainx.schedules.step_rules import check_step_count, saturated_rate, valid_step
from keras_trainx.validation import check_float


@keras.saving.register_keras_serializable(package="keras_trainx")
class MultiStepDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Decays the learning rate by `factor` once the step reaches each milestone.

    ```python
    def learning_rate(step):
        return initial_learning_rate * factor ** sum(step >= m for m in milestones)
    ```

    The update with index `m` (a milestone) already uses the decayed rate, as PyTorch's
    `torch.optim.lr_scheduler.MultiStepLR` stepped once per update. A `factor > 1` is allowed (as in
    torch); a rate beyond float32's range saturates at its largest value, and a step below 0 or NaN is
    step 0 (`keras_trainx.schedules.step_rules`).

    Args:
        initial_learning_rate: Python float > 0. The learning rate before the first milestone.
        milestones: Strictly increasing list of Python ints in [1, 2**63 - 1]: the steps where the rate
            drops.
        factor: Python float > 0. Multiplier applied at each milestone.

    Example:

    >>> import keras_trainx
    >>> schedule = keras_trainx.schedules.MultiStepDecay(0.1, milestones=[30, 80], factor=0.1)
    >>> [round(float(schedule(s)), 6) for s in (0, 29, 30, 79, 80)]
    [0.1, 0.1, 0.01, 0.01, 0.001]
    """

    def __init__(self, initial_learning_rate: float, milestones: Sequence[int], factor: float = 0.1) -> None:
        super().__init__()
        self.initial_learning_rate = check_float("initial_learning_rate", initial_learning_rate, minimum=0.0,
                                                 exclusive_minimum=True)
        if not isinstance(milestones, (list, tuple)) or not milestones:
            raise TypeError(f"`milestones` must be a non-empty list of ints; received milestones={milestones!r}.")
        milestones = [check_step_count(f"milestones[{i}]", m, minimum=1) for i, m in enumerate(milestones)]
        if any(b <= a for a, b in zip(milestones, milestones[1:])):
            raise ValueError(f"`milestones` must be strictly increasing; received milestones={milestones}.")
        self.milestones = milestones
        self.factor = check_float("factor", factor, minimum=0.0, exclusive_minimum=True)

    def __call__(self, step: Any) -> Any:
        step = valid_step(step)
        milestones = ops.convert_to_tensor(self.milestones, step.dtype)
        passed = ops.sum(ops.cast(ops.expand_dims(step, -1) >= milestones, "float32"), axis=-1)
        decayed = self.initial_learning_rate * ops.power(ops.convert_to_tensor(self.factor, "float32"), passed)
        return saturated_rate(decayed)

    def get_config(self) -> dict[str, Any]:
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "milestones": self.milestones,
            "factor": self.factor,
        }
