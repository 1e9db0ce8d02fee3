"""Activation functions: `mish` (Keras' built-in, re-exported) and `hard_mish`.

`mish` is `keras.activations.mish` itself: a model using it saves as `"mish"` and loads with plain Keras.
Keras' implementation, `x * tanh(softplus(x))` on TensorFlow's overflow-safe softplus, has finite values
and gradients for |x| up to 1e3 (and beyond) in float32 and float16 (tests/test_activations.py), so
there is nothing to fix.
"""

from typing import Any

import keras
from keras import ops

mish = keras.activations.mish


@keras.saving.register_keras_serializable(package="keras_trainx")
def hard_mish(x: Any) -> Any:
    """Hard Mish: a piecewise-quadratic approximation of Mish without exp/log.

    `hard_mish(x) = x * min(max(x + 2, 0), 2) / 2`: 0 for x <= -2, `x * (x + 2) / 2` on (-2, 0),
    `x` for x >= 0. No exp/log, so cheaper than Mish on CPUs and edge accelerators; timm ships it
    and ports of timm models to Keras need it. Computed piece by piece, so it holds at the ends of
    every float dtype: `hard_mish(-inf)` is 0 and `hard_mish(inf)` is inf (the limits), float16
    inputs up to its largest value stay finite (no `x * 2` that overflows), and the gradient is 0
    below -2 and 1 from 0 up, infinities included.

    Args:
        x: Input tensor of a floating-point dtype (a Python float or list of floats included). Any
            other dtype (integers, bool, complex, strings) and `None` raise `TypeError` naming
            `hard_mish`: its middle piece is not an integer (`hard_mish(-1) = -0.5`), so cast first.

    Returns:
        A tensor of the same shape and dtype as `x`.

    Reference:
        timm's `hard_mish` (`timm/layers/activations.py`), after Diganta Misra's notes in
        github.com/digantamisra98/H-Mish.

    Example:

    >>> import keras_trainx
    >>> keras_trainx.activations.hard_mish([-float("inf"), -3.0, -1.0, 0.5]).numpy().tolist()
    [0.0, 0.0, -0.5, 0.5]
    """
    x = _floating(x)
    middle = ops.clip(x, -2.0, 0.0)  # the quadratic piece, evaluated where it is finite
    return ops.where(x >= 0, x, ops.where(x < -2.0, ops.zeros_like(x), middle * (middle + 2.0) / 2.0))


def _floating(x: Any) -> Any:
    """`x` as a tensor of a floating-point dtype; `TypeError` naming `hard_mish` otherwise."""
    if x is None or isinstance(x, (str, bytes)):
        raise TypeError(f"hard_mish: `x` must be a tensor of floats; received x={x!r} of type {type(x).__name__}.")
    x = ops.convert_to_tensor(x)
    dtype = keras.backend.standardize_dtype(x.dtype)
    if not keras.backend.is_float_dtype(dtype):
        raise TypeError(f"hard_mish: `x` must be a tensor of floats; received a tensor of dtype {dtype}. Cast it "
                        "first, e.g. `keras.ops.cast(x, \"float32\")`.")
    return x
