"""`AllReduceCounter`: a `MirroredStrategy` cross-device op that counts the all-reduces it executes.

It is how the claim "one gradient all-reduce per update" is checked (tests/test_fit_distributed.py,
benchmarks/bench_distributed.py), and how a user can check it for their own model.
"""

from typing import Any

import tensorflow as tf


class AllReduceCounter(tf.distribute.ReductionToOneDevice):
    """Reduces like `tf.distribute.ReductionToOneDevice` and counts, at run time, what it reduced.

    Each reduction adds one to a counter variable inside the compiled graph, so the counts are what
    ran, not what was traced: a reduction inside a micro-step loop would count once per micro-step.
    A batch reduction counts once (`ReductionToOneDevice` implements it with one
    `reduce_implementation` per tensor, which are not counted again). A reduction of several tensors
    counts as a gradient all-reduce (one tensor per variable: a model with one variable is not told
    apart); a reduction of one tensor (the window's statistics vector, a metric read) is counted in
    `scalar_reductions`.

    Attributes:
        gradient_reductions: int64 `tf.Variable`, reductions of more than one tensor.
        scalar_reductions: int64 `tf.Variable`, reductions of one tensor.

    Example (on two replicas: with one, `MirroredStrategy` reduces nothing; on one CPU, split it with
    `tf.config.set_logical_device_configuration` before TensorFlow starts):

    ```python
    counter = AllReduceCounter()
    strategy = tf.distribute.MirroredStrategy(["/gpu:0", "/gpu:1"], cross_device_ops=counter)
    with strategy.scope():
        model = build_and_compile_model()
    keras_trainx.fit_accumulated(model, x, y, batch_size=32, accum_steps=4, epochs=1)
    counter.gradient_reductions.numpy()  # updates of the epoch: one gradient all-reduce each
    ```
    """

    def __init__(self) -> None:
        super().__init__()
        with tf.device("/cpu:0"):
            self.gradient_reductions = tf.Variable(0, dtype=tf.int64, trainable=False)
            self.scalar_reductions = tf.Variable(0, dtype=tf.int64, trainable=False)
        self._in_batch = False

    def _count(self, values: list) -> None:
        counter = self.gradient_reductions if len(values) > 1 else self.scalar_reductions
        counter.assign_add(1)

    def reduce_implementation(self, reduce_op: Any, per_replica_value: Any, destinations: Any,
                              options: Any) -> Any:
        if not self._in_batch:
            self._count([per_replica_value])
        return super().reduce_implementation(reduce_op, per_replica_value, destinations, options)

    def batch_reduce_implementation(self, reduce_op: Any, value_destination_pairs: Any, options: Any) -> Any:
        self._count([value for value, _ in value_destination_pairs])
        self._in_batch = True
        try:
            return super().batch_reduce_implementation(reduce_op, value_destination_pairs, options)
        finally:
            self._in_batch = False
