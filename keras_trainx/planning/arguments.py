"""Argument checks the planning tools share: a compiled model, and array data with its sample count and
finite values."""

from typing import Any

import keras
import numpy as np
import tensorflow as tf


def check_compiled_model(model: Any, tool: str) -> None:
    """Raises unless `model` is a `keras.Model` compiled with an optimizer.

    Example:

    >>> check_compiled_model("model.keras", "lr_range_test")
    Traceback (most recent call last):
    ...
    TypeError: `model` must be a keras.Model; received model of type str.
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a keras.Model; received model of type {type(model).__name__}.")
    if not getattr(model, "compiled", False) or model.optimizer is None:
        raise ValueError(f"`model` must be compiled with an optimizer and a loss before {tool}: call "
                         "model.compile(optimizer=..., loss=...) first.")


def is_array_data(data: Any) -> bool:
    """Whether `data` is a numpy array or tensor, or a non-empty nested structure of them."""
    leaves = tf.nest.flatten(data)
    return data is not None and bool(leaves) and all(isinstance(leaf, (np.ndarray, tf.Tensor)) for leaf in leaves)


def array_sample_count(x: Any, y: Any) -> int:
    """The number of samples of the arrays `x` and `y` (`y` may be None); raises unless they agree.

    Example:

    >>> import numpy as np
    >>> array_sample_count({"a": np.zeros((5, 2)), "b": np.zeros((5,))}, np.zeros((5, 1)))
    5
    """
    for name, data in (("x", x), ("y", y)):
        if (name == "x" or data is not None) and not is_array_data(data):
            raise TypeError(f"`{name}` must be numpy arrays or tensors (or a nested structure of them); "
                            f"received {name} of type {type(data).__name__}.")
    lengths = sorted({len(leaf) for data in (x, y) if data is not None for leaf in tf.nest.flatten(data)})
    if len(lengths) != 1 or lengths[0] == 0:
        raise ValueError(f"`x` and `y` must hold the same number of samples, at least 1; received arrays of "
                         f"{' and '.join(map(str, lengths))} samples.")
    return lengths[0]


def check_finite(name: str, data: Any) -> None:
    """Raises unless every floating-point value of the arrays `data` (None passes) is finite.

    Example:

    >>> import numpy as np
    >>> check_finite("y", {"a": np.array([[1.0], [np.inf], [np.nan]])})
    Traceback (most recent call last):
    ...
    ValueError: `y` holds values that are not finite (NaN or inf) in 2 samples, the first at index 1: their loss is not finite at any learning rate. Remove or repair those samples.
    """
    bad = np.zeros(0, dtype=bool)
    for leaf in tf.nest.flatten(data) if data is not None else []:
        values = np.asarray(leaf)
        if np.issubdtype(values.dtype, np.inexact):
            samples = ~np.isfinite(values).reshape(len(values), -1).all(axis=1)
            bad = samples if not bad.size else bad | samples
    if bad.any():
        raise ValueError(
            f"`{name}` holds values that are not finite (NaN or inf) in {int(bad.sum())} sample"
            f"{'s' if bad.sum() > 1 else ''}, the first at index {int(np.argmax(bad))}: their loss is not finite "
            "at any learning rate. Remove or repair those samples.")
