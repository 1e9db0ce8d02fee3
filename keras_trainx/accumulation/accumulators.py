"""Per-replica sums of a window: gradient sums per divisor group, and the window's statistics.

The sums are `ON_READ` variables with `SUM` aggregation, created under the model's strategy: a
micro-step adds to its own replica's copy with no cross-replica traffic, and the update reads them
once. They belong to no model, so they never appear in `get_weights()` or a saved model. Every model
has the gradient group of its compiled loss (`"divisor"`); a group for losses that the big batch
divides by another count (`keras_trainx.accumulation.loss_normalization`) is added when a model first needs it.
"""

import tensorflow as tf

from keras_trainx.accumulation.loss_normalization import DIVISOR


class Accumulators:
    """Gradient sums for `variables`, per group, and a statistics vector of float32 entries.

    Args:
        strategy: the `tf.distribute.Strategy` the model trains under.
        variables: the model's trainable variables, in the order gradients are given.
        num_statistics: length of the statistics vector.
    """

    def __init__(self, strategy: tf.distribute.Strategy, variables: list[tf.Variable],
                 num_statistics: int) -> None:
        self.strategy = strategy
        self.variables = variables
        self.gradients: dict[str, list[tf.Variable]] = {}
        self.first_weights: dict[str, tf.Variable] = {}
        self._with_gradient: dict[str, list[bool]] = {}
        with strategy.scope():
            self.statistics = _replica_sum(tf.zeros(num_statistics), "accumulated_window_statistics")
        self.add_group(DIVISOR)

    def add_group(self, group: str) -> None:
        """Creates the gradient sums of `group` (outside any traced function)."""
        with tf.init_scope(), self.strategy.scope():
            self.gradients[group] = [
                _replica_sum(tf.zeros(v.shape, v.dtype),
                             f"accumulated_{group}_" + v.name.replace("/", "_").replace(":", "_"))
                for v in self.variables
            ]
            self.first_weights[group] = _replica_sum(tf.zeros(()), f"accumulated_{group}_first_weight")
        self._with_gradient[group] = [False] * len(self.variables)

    def zero(self) -> None:
        """Resets this replica's sums (at the start of every window)."""
        for accumulators in self.gradients.values():
            for accumulator in accumulators:
                accumulator.assign(tf.zeros_like(accumulator))
        self.statistics.assign(tf.zeros_like(self.statistics))

    def add(self, group: str, gradients: list[tf.Tensor | tf.IndexedSlices | None], weight: tf.Tensor,
            step: tf.Tensor) -> None:
        """Adds `weight * gradient` to `group`'s sum of each variable (None: no gradient).

        The window's first micro-step (`step` 0) adds its gradient unweighted and keeps `weight`
        aside; `weigh_first` applies it when a second micro-step comes. A window of one micro-step
        thus holds the gradient exactly as computed, and `window_gradients` applies it as
        `Model.fit` would (multiplying by `c` and dividing by `c` again rounds).

        `gradients` are in the accumulators' dtype (the variables', float32 under mixed precision),
        already unscaled, so mixed-precision backward passes see the same magnitudes as in
        `Model.fit`. A sparse gradient (`tf.IndexedSlices`, an `Embedding`'s) is added with a scatter:
        its rows, repeated indices summed as densifying sums them (so the optimizer sees the standard,
        dense gradient), at the cost of the micro-batch's tokens rather than of the whole table; under
        a multi-replica strategy, whose per-replica sums have no scatter, it is densified.
        """
        first = tf.equal(step, 0)
        first_weight = self.first_weights[group]
        first_weight.assign(tf.where(first, tf.cast(weight, first_weight.dtype), first_weight))
        weight = tf.where(first, tf.ones_like(weight), weight)
        with_gradient = self._with_gradient[group]
        for index, (accumulator, gradient) in enumerate(zip(self.gradients[group], gradients)):
            if gradient is None:
                continue
            with_gradient[index] = True
            if isinstance(gradient, tf.IndexedSlices) and isinstance(accumulator, tf.distribute.DistributedValues):
                gradient = tf.convert_to_tensor(gradient)  # per-replica (ON_READ) sums have no scatter
            if isinstance(gradient, tf.IndexedSlices):
                # Each row's occurrences summed first, as densifying sums them: the same arithmetic.
                rows, positions = tf.unique(gradient.indices)
                summed = tf.math.unsorted_segment_sum(gradient.values, positions, tf.shape(rows)[0])
                accumulator.scatter_add(tf.IndexedSlices(summed * tf.cast(weight, summed.dtype), rows))
            else:
                accumulator.assign_add(gradient * tf.cast(weight, gradient.dtype))

    def weigh_first(self) -> None:
        """Multiplies the sums by the first micro-step's weights (before the second one adds)."""
        for group, accumulators in self.gradients.items():
            for accumulator in accumulators:
                accumulator.assign(accumulator * tf.cast(self.first_weights[group], accumulator.dtype))

    def window_gradients(self, divisors: dict[str, tf.Tensor],
                         micro_steps: tf.Tensor) -> list[tf.Tensor | None]:
        """Each variable's `sum over groups of (group's sum / its divisor)`, or None: no gradient.

        A divisor of 0 (a window whose every sample weight is 0, or every token masked) gives a
        zero gradient, as Keras' reductions divide with `divide_no_nan`. After one micro-step
        (`micro_steps` 1) the sums are unweighted and the divisor is divided by the first weight:
        one replica's `c / c` is exactly 1, so the gradient is applied as computed.
        """
        totals: list[tf.Tensor | None] = [None] * len(self.variables)
        for group, accumulators in self.gradients.items():
            divisor = self._divisor(group, divisors, micro_steps)
            for index, (accumulator, has_gradient) in enumerate(zip(accumulators, self._with_gradient[group])):
                if not has_gradient:
                    continue
                part = tf.math.divide_no_nan(tf.identity(accumulator), tf.cast(divisor, accumulator.dtype))
                totals[index] = part if totals[index] is None else totals[index] + part
        return totals

    def window_norm_parts(self, divisors: dict[str, tf.Tensor],
                          micro_steps: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """`(half, divisor)`: the squared norm of `window_gradients(divisors, micro_steps)` (all
        variables together) is `2 * half / divisor**2`, both float32 scalars.

        With a single group (a model's compiled loss alone) `half` is half the squared norm of that
        group's sums and `divisor` its divisor, read straight from the sums: no divided copy of every
        gradient is made for it. With several groups, `half` is half the squared norm of the window
        gradient and `divisor` is 1.
        """
        groups = [group for group, has in self._with_gradient.items() if any(has)]
        if len(groups) != 1:
            return half_squared_norm(self.window_gradients(divisors, micro_steps)), tf.constant(1.0)
        group = groups[0]
        sums = [accumulator for accumulator, has in zip(self.gradients[group], self._with_gradient[group]) if has]
        return half_squared_norm(sums), self._divisor(group, divisors, micro_steps)

    def _divisor(self, group: str, divisors: dict[str, tf.Tensor], micro_steps: tf.Tensor) -> tf.Tensor:
        """What `group`'s sums are divided by: its divisor, over the first weight after one micro-step
        (whose gradient the sums hold unweighted)."""
        divisor = tf.cast(divisors[group], tf.float32)
        return tf.where(tf.equal(micro_steps, 1), tf.math.divide_no_nan(divisor, self.first_weights[group]), divisor)


def half_squared_norm(tensors: list[tf.Tensor | tf.Variable | None]) -> tf.Tensor:
    """Half the sum of the squares of every entry of `tensors` (None skipped), as a float32 scalar.

    One fused kernel per tensor (`l2_loss`) rather than a square and a sum, and no doubling: on a
    dispatch-bound model the noise scale's cost is mostly its number of ops, and the factor 2 is
    applied once, on the host (`GradientNoiseScale`).

    Example:

    >>> float(half_squared_norm([tf.constant([3.0, 4.0]), None, tf.constant([[1.0]])]))
    13.0
    """
    halves = [tf.nn.l2_loss(tf.cast(t, tf.float32)) for t in tensors if t is not None]
    return tf.add_n(halves) if halves else tf.constant(0.0)


def unscaled(gradient: tf.Tensor | tf.IndexedSlices | None, dtype: tf.DType,
             unscale: tf.Tensor | None) -> tf.Tensor | tf.IndexedSlices | None:
    """`gradient` in `dtype`, divided by the loss scale `unscale` if given; sparse stays sparse."""
    if gradient is None:
        return None
    if isinstance(gradient, tf.IndexedSlices):
        return tf.IndexedSlices(unscaled(gradient.values, dtype, unscale), gradient.indices,
                                gradient.dense_shape)
    gradient = tf.cast(gradient, dtype)
    if unscale is not None:
        gradient = gradient / tf.cast(unscale, dtype)
    return gradient


def _replica_sum(initial_value: tf.Tensor, name: str) -> tf.Variable:
    return tf.Variable(initial_value, trainable=False, name=name,
                       synchronization=tf.VariableSynchronization.ON_READ,
                       aggregation=tf.VariableAggregation.SUM)
