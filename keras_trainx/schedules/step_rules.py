"""The call-time rules every schedule of keras_trainx shares: the step it reads, the rate it returns.

- A step below 0, or NaN, is evaluated as step 0 (an optimizer's counter never holds one; a call
  with one gets the first rate rather than a negative or NaN rate).
- An integer step of any width is read as int64, so an int32 counter compares correctly with step
  counts beyond 2**31 (e.g. `warmup_steps=3_000_000_000`).
- A peak beyond float32's range (growing peaks: `gamma > 1`, `factor > 1`) saturates at float32's
  largest value instead of overflowing to inf, and so does any rate: never inf, never NaN from it.

Both are graph- and XLA-safe (`ops.where`, no Python branch on tensor values).
"""

from typing import Any

import keras
import numpy as np
from keras import ops

FLOAT32_MAX = float(np.finfo(np.float32).max)


def valid_step(step: Any) -> Any:
    """`step` as a tensor (int64 for integer steps), with a step below 0 or NaN replaced by 0.

    Example:

    >>> [float(valid_step(s)) for s in (-3, 4, float("nan"), 2.5)]
    [0.0, 4.0, 0.0, 2.5]
    """
    step = ops.convert_to_tensor(step)
    if "int" in keras.backend.standardize_dtype(step.dtype):
        step = ops.cast(step, "int64")
    return ops.where(step > 0, step, ops.zeros_like(step))


def saturated_rate(rate: Any) -> Any:
    """`rate` as float32, saturating at float32's largest value instead of becoming inf.

    Example:

    >>> float(saturated_rate(1e300)) == FLOAT32_MAX
    True
    """
    return ops.cast(ops.minimum(rate, FLOAT32_MAX), "float32")
