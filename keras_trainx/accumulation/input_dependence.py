"""Whether a loss a layer added depends on the model's inputs, decided on the traced graph.

An `add_loss` term computed in `call` is either a function of the batch (a sum over its samples,
as Keras' `add_loss(ops.sum(x))` example) or not (a weight penalty such as
`add_loss(1e-2 * ops.sum(self.kernel ** 2))`). The big batch adds the first kind once over all its
samples and the second once per step, like a `kernel_regularizer`, so accumulation must tell them
apart. A term depends on the inputs when its graph has a path from one of the input tensors: data
dependence, not value (a term that reads the batch size depends on the inputs; a random term that
reads none does not).
"""

from collections.abc import Callable
from typing import Any

import tensorflow as tf


def depends_on_inputs(tensors: list[tf.Tensor], inputs: Any) -> list[bool]:
    """For each of `tensors`, whether its traced graph has a path from one of `inputs`.

    Args:
        tensors: symbolic tensors of the graph being traced (inside a `tf.function`).
        inputs: a nested structure of that graph's input tensors (None entries are skipped).

    Example:

    >>> import tensorflow as tf
    >>> weight = tf.Variable(2.0)
    >>> @tf.function(autograph=False)
    ... def flags(x):
    ...     return tf.constant(depends_on_inputs([tf.reduce_sum(x * weight), weight * weight], x))
    >>> flags(tf.ones(3)).numpy().tolist()
    [True, False]
    """
    sources = {t.ref() for t in tf.nest.flatten(inputs) if isinstance(t, tf.Tensor)}
    return [_reaches(tf.convert_to_tensor(tensor), sources) for tensor in tensors]


def traced_dependence(forward: Callable[[Any], list[tf.Tensor]], inputs: Any) -> list[bool]:
    """`depends_on_inputs` for what `forward(inputs)` returns, traced once on `inputs`' specs.

    For eager execution, whose tensors keep no graph: the trace runs nothing (variables are read,
    not changed).

    Args:
        forward: computes the tensors to classify from inputs shaped as `inputs`.
        inputs: a nested structure of eager tensors (or None entries).

    Example:

    >>> import tensorflow as tf
    >>> weight = tf.Variable(2.0)
    >>> traced_dependence(lambda x: [tf.reduce_sum(x), weight * 3.0], tf.ones(2))
    [True, False]
    """
    flags: list[bool] = []

    def trace(traced_inputs: Any) -> tf.Tensor:
        flags.extend(depends_on_inputs(forward(traced_inputs), traced_inputs))
        return tf.constant(0)

    specs = tf.nest.map_structure(
        lambda t: None if t is None else tf.TensorSpec(t.shape, t.dtype), inputs)
    tf.function(trace, autograph=False).get_concrete_function(specs)
    return flags


def _reaches(tensor: tf.Tensor, sources: set) -> bool:
    """Whether `tensor` is one of `sources` or computed from one (a walk over op inputs)."""
    if tensor.ref() in sources:
        return True
    seen = {tensor.op.name}
    pending = [tensor.op]
    while pending:
        for operand in pending.pop().inputs:
            if operand.ref() in sources:
                return True
            if operand.op.name not in seen:
                seen.add(operand.op.name)
                pending.append(operand.op)
    return False
