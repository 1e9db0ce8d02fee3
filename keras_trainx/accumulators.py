"""Per-replica sums of a window: each trainable variable's gradient and the window's statistics.

The sums are `ON_READ` variables with `SUM` aggregation, created under the model's strategy: a
micro-step adds to its own replica's copy with no cross-replica traffic, and the update reads them
once. They belong to no model, so they never appear in `get_weights()` or a saved model.
"""

import tensorflow as tf


class Accumulators:
    """Gradient sums for `variables` and a statistics vector of `num_statistics` float32 entries.

    Args:
        strategy: the `tf.distribute.Strategy` the model trains under.
        variables: the model's trainable variables, in the order gradients are given.
        num_statistics: length of the statistics vector.
    """

    def __init__(self, strategy: tf.distribute.Strategy, variables: list[tf.Variable],
                 num_statistics: int) -> None:
        self.variables = variables
        self._with_gradient = [False] * len(variables)
        with strategy.scope():
            self.gradients = [_replica_sum(tf.zeros(v.shape, v.dtype),
                                           "accumulated_" + v.name.replace("/", "_").replace(":", "_"))
                              for v in variables]
            self.statistics = _replica_sum(tf.zeros(num_statistics), "accumulated_window_statistics")

    def zero(self) -> None:
        """Resets this replica's sums (at the start of every window)."""
        for accumulator in self.gradients:
            accumulator.assign(tf.zeros_like(accumulator))
        self.statistics.assign(tf.zeros_like(self.statistics))

    def add(self, gradients: list[tf.Tensor | None], weight: tf.Tensor, unscale: tf.Tensor | None,
            statistics: tf.Tensor) -> None:
        """Adds `weight * gradient / unscale` per variable (None: no gradient) and `statistics`.

        The gradients are cast to the accumulators' dtype (the variables', float32 under mixed
        precision) before the weight is applied, so mixed-precision backward passes see the same
        magnitudes as in `Model.fit`.
        """
        for index, (accumulator, gradient) in enumerate(zip(self.gradients, gradients)):
            if gradient is None:
                continue
            self._with_gradient[index] = True
            gradient = tf.cast(tf.convert_to_tensor(gradient), accumulator.dtype)
            if unscale is not None:
                gradient = gradient / tf.cast(unscale, gradient.dtype)
            accumulator.assign_add(gradient * tf.cast(weight, gradient.dtype))
        self.statistics.assign_add(statistics)

    def gradient_pairs(self, divisor: tf.Tensor, scale: tf.Tensor | None) -> list[tuple[tf.Tensor, tf.Variable]]:
        """`(sum / divisor * scale, variable)` for every variable that received a gradient."""
        pairs = []
        for accumulator, variable, has_gradient in zip(self.gradients, self.variables, self._with_gradient):
            if not has_gradient:
                continue
            gradient = tf.identity(accumulator) / tf.cast(divisor, accumulator.dtype)
            if scale is not None:
                gradient = gradient * tf.cast(scale, gradient.dtype)
            pairs.append((gradient, variable))
        return pairs


def _replica_sum(initial_value: tf.Tensor, name: str) -> tf.Variable:
    return tf.Variable(initial_value, trainable=False, name=name,
                       synchronization=tf.VariableSynchronization.ON_READ,
                       aggregation=tf.VariableAggregation.SUM)
