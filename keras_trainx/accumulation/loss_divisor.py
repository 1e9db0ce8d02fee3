"""`set_loss_divisor()`: how a custom `compute_loss` that divides by a batch statistic stays exact.

Some models divide their summed loss by a count computed from the batch, not by the number of
samples: a detector by its positive anchors (KerasHub's RetinaNet), a language model by the tokens
that carry a label. Under accumulation the big batch divides the window's summed loss by the
window's total count, so `fit_accumulated` must know each micro-batch's count; a `compute_loss` tells
it with `set_loss_divisor(count)`. Under `Model.fit` (and anywhere outside `fit_accumulated`'s
micro-steps) the call does nothing.
"""

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_recorders = threading.local()  # strategies run each replica's micro-step in a thread of its own


def set_loss_divisor(count: Any) -> None:
    """Tells `fit_accumulated` the count the loss being computed divides its summed loss by.

    Call it inside an overridden `compute_loss` whose loss is `sum / count` with `count` computed
    from the batch (positive anchors, labelled tokens, ...). `fit_accumulated` then accumulates
    `count_i * grad(loss_i)` over the window's micro-batches and divides by the window's total
    count, which is the big batch's `sum / count`: the update and the reported loss equal one
    `Model.fit` step on the window's concatenated samples. A micro-batch whose count is 0 must
    return a loss of 0 (e.g. a sum of zeros divided by `maximum(count, 1)`); it then adds nothing.
    Without the call, `fit_accumulated` takes an overridden `compute_loss` to be a mean over the
    micro-batch's samples. Outside `fit_accumulated`'s micro-steps (`Model.fit`, `evaluate`) it
    does nothing.

    Under a `tf.distribute` strategy `count` is that of the replica's share of the batch, and the
    loss is returned as Keras expects of `compute_loss` there (and its own losses do): divided by
    the number of replicas, since `fit` sums the replicas' gradients.

    Args:
        count: a scalar tensor or number >= 0: what the returned loss was divided by.

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
    recorder = getattr(_recorders, "active", None)
    if recorder is not None:
        recorder.append(count)


@contextmanager
def recording_loss_divisor() -> Iterator[list]:
    """Collects the counts `set_loss_divisor` is given while the block runs (in this thread)."""
    outer = getattr(_recorders, "active", None)
    recorded: list = []
    _recorders.active = recorded
    try:
        yield recorded
    finally:
        _recorders.active = outer
