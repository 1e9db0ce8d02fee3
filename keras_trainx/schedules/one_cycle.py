"""`OneCycle`: the 1cycle learning-rate policy, as torch's OneCycleLR (two phases)."""

import math
from typing import Any

import keras
from keras import ops

from keras_trainx.schedules.step_rules import check_step_count, saturated_rate, valid_step
from keras_trainx.validation import check_float

_ANNEALS = ("cos", "linear")


@keras.saving.register_keras_serializable(package="keras_trainx")
class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """Anneals up from `max_learning_rate / div_factor` to `max_learning_rate`, then down to
    `max_learning_rate / div_factor / final_div_factor`.

    The learning rate of PyTorch's `torch.optim.lr_scheduler.OneCycleLR` (with `three_phase=False`)
    stepped once per update:

    ```python
    initial = max_learning_rate / div_factor
    final = initial / final_div_factor
    peak = pct_start * total_steps - 1          # a float, as in torch
    def learning_rate(step):
        step = min(step, total_steps - 1)
        if step <= peak:
            return anneal(initial, max_learning_rate, step / peak)
        return anneal(max_learning_rate, final, (step - peak) / (total_steps - 1 - peak))
    # anneal="cos":    anneal(a, b, p) = b + (a - b) / 2 * (1 + cos(pi * p))
    # anneal="linear": anneal(a, b, p) = a + (b - a) * p
    ```

    Steps past `total_steps - 1` keep the final learning rate (torch raises there instead); a step
    below 0 or NaN is step 0 (`keras_trainx.schedules.step_rules`).

    Args:
        max_learning_rate: Python float > 0. The peak learning rate.
        total_steps: Python int in [2, 2**63 - 1]. Number of updates in the cycle.
        pct_start: Python float in (0, 1). Fraction of the cycle spent increasing; the peak step
            `pct_start * total_steps - 1` must lie strictly between 0 and `total_steps - 1`.
        div_factor: Python float > 0. `initial = max_learning_rate / div_factor`.
        final_div_factor: Python float > 0. `final = initial / final_div_factor`.
        anneal: `"cos"` or `"linear"`.

    Example:

    >>> import keras_trainx
    >>> schedule = keras_trainx.schedules.OneCycle(0.1, total_steps=100)
    >>> [round(float(schedule(s)), 6) for s in (0, 29, 99)]
    [0.004, 0.1, 0.0]
    """

    def __init__(self, max_learning_rate: float, total_steps: int, pct_start: float = 0.3, div_factor: float = 25.0,
                 final_div_factor: float = 1e4, anneal: str = "cos") -> None:
        super().__init__()
        self.max_learning_rate = check_float("max_learning_rate", max_learning_rate, minimum=0.0,
                                             exclusive_minimum=True)
        self.total_steps = check_step_count("total_steps", total_steps, minimum=2)
        self.pct_start = check_float("pct_start", pct_start, minimum=0.0, exclusive_minimum=True)
        peak = self.pct_start * self.total_steps - 1
        if not 0 < peak < self.total_steps - 1:
            raise ValueError(
                "`pct_start * total_steps - 1` (the step of the peak) must lie in (0, total_steps - 1); "
                f"received pct_start={pct_start}, total_steps={total_steps} (peak {peak}). "
                "Raise total_steps or move pct_start towards 0.5."
            )
        self.div_factor = check_float("div_factor", div_factor, minimum=0.0, exclusive_minimum=True)
        self.final_div_factor = check_float("final_div_factor", final_div_factor, minimum=0.0, exclusive_minimum=True)
        if anneal not in _ANNEALS:
            raise ValueError(f"`anneal` must be one of {_ANNEALS}; received anneal={anneal!r}.")
        self.anneal = anneal

    def _anneal(self, start: Any, end: Any, pct: Any) -> Any:
        """Weighted sums rather than torch's `end + (start - end) * w`: exact at both ends in float32."""
        if self.anneal == "cos":
            weight = (1.0 + ops.cos(math.pi * pct)) / 2.0
        else:
            weight = 1.0 - pct
        return start * weight + end * (1.0 - weight)

    def __call__(self, step: Any) -> Any:
        step = ops.minimum(ops.cast(valid_step(step), "float32"), float(self.total_steps - 1))
        initial = self.max_learning_rate / self.div_factor
        final = initial / self.final_div_factor
        peak = self.pct_start * self.total_steps - 1
        rising = self._anneal(initial, self.max_learning_rate, step / peak)
        falling = self._anneal(self.max_learning_rate, final, (step - peak) / (self.total_steps - 1 - peak))
        return saturated_rate(ops.where(step <= peak, rising, falling))

    def get_config(self) -> dict[str, Any]:
        return {
            "max_learning_rate": self.max_learning_rate,
            "total_steps": self.total_steps,
            "pct_start": self.pct_start,
            "div_factor": self.div_factor,
            "final_div_factor": self.final_div_factor,
            "anneal": self.anneal,
        }
