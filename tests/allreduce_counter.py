"""A MirroredStrategy cross-device op that counts, at run time, the all-reduces it executes.

Each reduction adds one to a counter variable inside the compiled graph, so the counts are what
ran, not what was traced: a reduction inside the micro-step loop would count once per micro-step.
A batch reduction counts once (ReductionToOneDevice implements it with one `reduce_implementation`
per tensor, which are not counted again). A reduction of several tensors is a gradient all-reduce (one
tensor per variable; the tests' models have several); a reduction of one tensor (the window's
statistics vector, a metric read) is counted apart.
"""

import tensorflow as tf


class CountingReductionToOneDevice(tf.distribute.ReductionToOneDevice):
    def __init__(self):
        super().__init__()
        with tf.device("/cpu:0"):
            self.gradient_reductions = tf.Variable(0, dtype=tf.int64, trainable=False)
            self.scalar_reductions = tf.Variable(0, dtype=tf.int64, trainable=False)
        self._in_batch = False

    def _count(self, values):
        counter = self.gradient_reductions if len(values) > 1 else self.scalar_reductions
        counter.assign_add(1)

    def reduce_implementation(self, reduce_op, per_replica_value, destinations, options):
        if not self._in_batch:
            self._count([per_replica_value])
        return super().reduce_implementation(reduce_op, per_replica_value, destinations, options)

    def batch_reduce_implementation(self, reduce_op, value_destination_pairs, options):
        self._count([value for value, _ in value_destination_pairs])
        self._in_batch = True
        try:
            return super().batch_reduce_implementation(reduce_op, value_destination_pairs, options)
        finally:
            self._in_batch = False
