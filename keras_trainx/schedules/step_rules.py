"""The call-time rules every schedule of keras_trainx shares: the step it reads, the rate it returns.

- A step below 0, or NaN, is evaluated as step 0 (an optimizer's counter never holds one; a call
  with one gets the first rate rather than a negative or NaN rate).
- An integer step of any width is read as int64, so an int32 counter compares correctly with step
  counts beyond 2**31 (e.g. `warmup_steps=3_000_000_000`). The optimizer counts its steps in int64,
  so no step lies beyond `MAX_STEP` (2**63 - 1): a Python or numpy integer step beyond it is refused,
  and a uint64 tensor step beyond it is read as `MAX_STEP` (not wrapped round to a negative step).
  Every step-count argument of a schedule is checked against `MAX_STEP` too (`check_step_count`).
- A peak beyond float32's range (growing peaks: `gamma > 1`, `factor > 1`) saturates at float32's
  largest value instead of overflowing to inf, and so does any rate: never inf, never NaN from it.

All are graph- and XLA-safe (`ops.where`, no Python branch on tensor values).
"""

import numbers
from typing import Any

import keras
import numpy as np
from keras import ops

from keras_trainx.validation import check_int

FLOAT32_MAX = float(np.finfo(np.float32).max)
MAX_STEP = 2**63 - 1  # the optimizer's `iterations` is an int64: no step lies beyond
_BEYOND_INT64 = "The optimizer counts steps in int64: no step lies beyond 2**63 - 1."


def check_step_count(name: str, value: Any, *, minimum: int) -> int:
    """`value` as an `int` if it is an integer in `[minimum, MAX_STEP]`: a count of optimizer steps.

    Example:

    >>> check_step_count("warmup_steps", 2**62, minimum=0)
    4611686018427387904
    >>> check_step_count("warmup_steps", 2**63, minimum=0)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: `warmup_steps` must be <= 2**63 - 1 (9223372036854775807); received warmup_steps=... 2**63 - 1.
    """
    value = check_int(name, value, minimum=minimum)
    if value > MAX_STEP:
        raise ValueError(f"`{name}` must be <= 2**63 - 1 ({MAX_STEP}); received {name}={value}. {_BEYOND_INT64}")
    return value


def valid_step(step: Any) -> Any:
    """`step` as a tensor (int64 for integer steps), with a step below 0 or NaN replaced by 0.

    Example:

    >>> [float(valid_step(s)) for s in (-3, 4, float("nan"), 2.5)]
    [0.0, 4.0, 0.0, 2.5]
    """
    if isinstance(step, numbers.Integral) and not isinstance(step, bool):
        if int(step) > MAX_STEP:
            raise ValueError(f"`step` must be <= 2**63 - 1 ({MAX_STEP}); received step={step}. {_BEYOND_INT64}")
        step = max(int(step), 0)  # also below int64's range, where no tensor holds it
    if isinstance(step, np.ndarray) and step.dtype.kind == "u" and (step > MAX_STEP).any():
        raise ValueError(f"`step` must be <= 2**63 - 1 ({MAX_STEP}); received step={step!r}. {_BEYOND_INT64}")
    step = ops.convert_to_tensor(step)
    dtype = keras.backend.standardize_dtype(step.dtype)
    if "int" in dtype:
        unsigned = dtype == "uint64"
        step = ops.cast(step, "int64")
        if unsigned:  # a uint64 from 2**63 on wraps round to a negative int64: it is MAX_STEP instead
            step = ops.where(step < 0, ops.full_like(step, MAX_STEP), step)
    return ops.where(step > 0, step, ops.zeros_like(step))


def saturated_rate(rate: Any) -> Any:
    """`rate` as float32, saturating at float32's largest value instead of becoming inf.

    Example:

    >>> float(saturated_rate(1e300)) == FLOAT32_MAX
    True
    """
    return ops.cast(ops.minimum(rate, FLOAT32_MAX), "float32")
