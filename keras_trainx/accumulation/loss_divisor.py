"""`set_loss_divisor()`: how a custom `compute_loss` that divides by a batch statistic stays exact.

Some models divide their summed loss by a count computed from the batch, not by the number of
samples: a detector by its positive anchors (KerasHub's RetinaNet), a language model by the tokens
that carry a label. Under accumulation the big batch divides the window's summed loss by the
window's total count, so `fit_accumulated` must know each micro-batch's count; a `compute_loss` tells
it with `set_loss_divisor(count)`. Under `Model.fit` (and anywhere outside `fit_accumulated`'s
micro-steps) the call only checks its arguments.
"""

import dataclasses
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import tensorflow as tf


@dataclasses.dataclass
class LossDivisor:
    """What one `set_loss_divisor` call reported: the big batch's `count` and the loss' `divided_by`."""

    count: tf.Tensor
    divided_by: tf.Tensor


_recorders = threading.local()  # strategies run each replica's micro-step in a thread of its own


def set_loss_divisor(count: Any, divided_by: Any = None) -> None:
    """Tells `fit_accumulated` the count the loss being computed divides its summed loss by.

    Call it inside an overridden `compute_loss` whose loss is `sum / count` with `count` computed
    from the batch (positive anchors, labelled tokens, ...). `fit_accumulated` then accumulates
    `count_i * grad(loss_i)` over the window's micro-batches and divides by the window's total
    count, which is the big batch's `sum / count`: the update and the reported loss equal one
    `Model.fit` step on the window's concatenated samples. Without the call, `fit_accumulated`
    takes an overridden `compute_loss` to be a mean over the micro-batch's samples. Outside
    `fit_accumulated`'s micro-steps (`Model.fit`, `evaluate`) it only checks its arguments.

    A micro-batch whose count is 0 can still hold loss that the big batch keeps: a detector's
    image without objects has no positive anchor, yet its negatives' classification loss counts
    in the big batch, divided by the window's positives. Return that sum undivided (divided by
    `maximum(count, 1)`) and pass `divided_by=maximum(count, 1)`: `fit_accumulated` then
    accumulates `divided_by_i * grad(loss_i)`, the undivided sum. (KerasHub's RetinaNet returns 0
    for such a batch, dropping that loss: see the accumulation guide for the `compute_loss` that
    keeps it.) A count of 0 with the default `divided_by` and a non-zero loss is refused, as
    are a count that is negative, NaN or infinite.

    Under a `tf.distribute` strategy `count` is that of the replica's share of the batch, and the
    loss is returned as Keras expects of `compute_loss` there (and its own losses do): divided by
    the number of replicas, since `fit` sums the replicas' gradients.

    Args:
        count: a scalar tensor or number >= 0: what the big batch divides the summed loss by, for
            this batch's share (the window's counts are added).
        divided_by: a scalar tensor or number > 0: what the returned loss was divided by, if not
            `count`.

    Example:

    >>> import keras, keras_trainx
    >>> from keras import ops
    >>> class TokenModel(keras.Sequential):
    ...     def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
    ...         labelled = ops.cast(ops.not_equal(y, -1), "float32")
    ...         count = ops.sum(labelled)
    ...         keras_trainx.set_loss_divisor(count)
    ...         return ops.sum(labelled * ops.square(y_pred[..., 0] - y)) / ops.maximum(count, 1.0)
    >>> model = TokenModel([keras.Input((3, 2)), keras.layers.Dense(1)])
    >>> model.compile(optimizer="sgd")
    >>> y = ops.convert_to_tensor([[1.0, -1.0, 0.5]])
    >>> float(model.compute_loss(y=y, y_pred=ops.ones((1, 3, 1))))  # outside fit_accumulated
    0.125
    """
    reported = LossDivisor(_scalar("count", count),
                           _scalar("divided_by", count if divided_by is None else divided_by))
    recorder = getattr(_recorders, "active", None)
    if recorder is not None:
        recorder.append(reported)


def _scalar(name: str, value: Any) -> tf.Tensor:
    """`value` as a float32 scalar tensor, or a TypeError/ValueError naming `name` and the fix."""
    if value is None or isinstance(value, (str, bytes)):
        raise TypeError(f"set_loss_divisor's `{name}` must be a number or a numeric scalar tensor; "
                        f"received {value!r}.")
    tensor = tf.convert_to_tensor(value)
    if not (tensor.dtype.is_floating or tensor.dtype.is_integer):
        raise TypeError(f"set_loss_divisor's `{name}` must be numeric; received a {tensor.dtype.name} "
                        "tensor.")
    if tensor.shape.rank is not None and tensor.shape.rank != 0:
        raise ValueError(f"set_loss_divisor's `{name}` must be a scalar; received shape "
                         f"{tensor.shape}. Sum it over the batch (ops.sum) first.")
    return tf.cast(tensor, tf.float32)


@contextmanager
def recording_loss_divisor() -> Iterator[list[LossDivisor]]:
    """Collects the counts `set_loss_divisor` is given while the block runs (in this thread)."""
    outer = getattr(_recorders, "active", None)
    recorded: list[LossDivisor] = []
    _recorders.active = recorded
    try:
        yield recorded
    finally:
        _recorders.active = outer
