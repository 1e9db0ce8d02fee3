"""The loss `fit` reports, and each output's loss, updated once per window with the big-batch value.

Keras' compiled loss adds the reported loss and every output's loss to `Mean` metrics on each call.
Under accumulation that would average micro-batch losses; `Model.fit` at the big batch reports the
big batch's loss. So each micro-step's additions to the output-loss metrics are read and undone
(`take_back`), the window's sums travel in its statistics, and `update` adds the big-batch values
once, counted as `Model.fit` counts them.
"""

import keras
import tensorflow as tf

from keras_trainx import compat


class WindowLossMetrics:
    """The model's loss tracker and per-output loss metrics, as one window updates them.

    Args:
        model: a compiled `keras.Model`.
    """

    def __init__(self, model: keras.Model) -> None:
        self.loss_tracker = compat.loss_tracker(model)
        self.output_metrics = compat.output_loss_metrics(model)

    def __len__(self) -> int:
        """The number of per-output loss metrics (0 for a single-output model)."""
        return len(self.output_metrics)

    def snapshot(self) -> list[list[tf.Tensor]]:
        """The per-output metrics' state before a micro-step, for `take_back`."""
        return [[tf.identity(v) for v in metric.variables] for metric in self.output_metrics]

    def take_back(self, states_before: list[list[tf.Tensor]]) -> tuple[tf.Tensor, list[tf.Tensor]]:
        """Undoes a micro-step's additions; returns the count Keras added and each output's loss.

        Keras counts a call as 1 or as its batch size (Keras versions differ); `update` counts the
        big batch the same way.
        """
        count_added, losses = tf.constant(0.0), []
        for metric, before in zip(self.output_metrics, states_before):
            (total, count), (total_before, count_before) = metric.variables, before
            count_added = tf.cast(tf.identity(count) - count_before, tf.float32)
            losses.append((tf.identity(total) - total_before) / count_added)
            total.assign(total_before)
            count.assign(count_before)
        return count_added, losses

    def update(self, loss: tf.Tensor, output_losses: tf.Tensor, divisor: tf.Tensor,
               samples: tf.Tensor, counted: tf.Tensor) -> None:
        """Adds the window's big-batch losses once.

        Args:
            loss: the window's big-batch loss (all replicas).
            output_losses: each output's `sum_i c_i * L_ik` (all replicas), a 1-D tensor.
            divisor: the window's `sum_i c_i` (1 for `"sum"`).
            samples: this replica's samples in the window (the weight of the reported loss).
            counted: what Keras added to an output's count on this replica's micro-steps.
        """
        self.loss_tracker.update_state(loss, sample_weight=samples)
        output_weight = tf.where(tf.equal(counted, samples), samples, 1.0)
        for metric, output_loss in zip(self.output_metrics, tf.unstack(output_losses)):
            metric.update_state(tf.math.divide_no_nan(output_loss, divisor), sample_weight=output_weight)
