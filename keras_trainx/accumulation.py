"""The compiled accumulation window: micro-steps accumulate locally, then one optimizer update.

One call of `WindowStep` pulls up to `num_steps` micro-batches from a (distributed) iterator, runs
forward and backward passes on each, adds the gradients into per-replica accumulators (no cross-replica
traffic), and then applies their sum once, normalized by the window's GLOBAL normalizer. The result
equals one `Model.fit` step on the concatenation of the window's micro-batches:

    big-batch loss  = (sum of weighted per-element losses) / (the big batch's divisor)
                    = sum_i (c_i / C) * L_i,   L_i = Keras' reduced loss of micro-batch i,
                                              c_i = its divisor, C = sum_i c_i

so each micro-step accumulates `c_i * grad(L_i)` (unscaled, in the variables' dtype, float32 under
mixed precision) and the update divides by `C` (`keras_trainx.loss_normalization` finds `c_i`).
Regularization losses enter once per update: their weights `c_i / C` sum to one (with `"sum"`, only
the first micro-step keeps them).

The loss `Model.fit` reports, and each output's loss of a multi-output model, are updated once per
window with the window's big-batch value (`keras_trainx.window_metrics`), so epoch logs equal those
of the big-batch `fit`; the other metrics update on every micro-batch.
"""

import inspect
import warnings
import weakref

from collections.abc import Callable
from typing import Any

import keras
import tensorflow as tf

from keras_trainx import compat
from keras_trainx.accumulators import Accumulators
from keras_trainx.loss_normalization import loss_reduction, micro_batch_divisor, regularization
from keras_trainx.window_metrics import WindowLossMetrics

_WINDOW_STEPS: "weakref.WeakKeyDictionary[keras.Model, tuple]" = weakref.WeakKeyDictionary()
# Window statistics, summed across replicas in one all-reduce: divisor C, sum of c_i * L_i, samples,
# the count Keras added to an output's loss metric, then sum of c_i * L_ik for each output k.
_DIVISOR, _WEIGHTED_LOSS, _SAMPLES, _OUTPUT_COUNT, _OUTPUT_LOSSES = 0, 1, 2, 3, slice(4, None)


class WindowStep:
    """Runs one accumulation window per call, compiled as Keras compiles `train_step`.

    Args:
        model: a compiled, built `keras.Model` (built under the strategy scope it trains with).
        apply_partial: whether a window that ends early (the data ran out) is applied as its own
            update, normalized by its own samples; if False it is discarded.

    Calling it with `(iterator, num_steps)` runs a window of up to `num_steps` micro-batches and
    returns `(processed, logs)`: how many micro-batches were consumed and the model's metric results.
    """

    def __init__(self, model: keras.Model, apply_partial: bool) -> None:
        self.model = model
        self.apply_partial = apply_partial
        self.strategy = model.distribute_strategy
        self.reduction = loss_reduction(model)
        self._variables = list(model.trainable_variables)
        if not self._variables:
            warnings.warn("The model does not have any trainable weights.", stacklevel=2)
        self._loss_metrics = WindowLossMetrics(model)
        self._compute_loss_has_training = (
            "training" in inspect.signature(model.compute_loss).parameters
        )
        self._sums = Accumulators(self.strategy, self._variables, 4 + len(self._loss_metrics))
        self._function = self._make_function()

    @classmethod
    def for_model(cls, model: keras.Model, apply_partial: bool) -> "WindowStep":
        """The model's cached window step, traced once, as `Model.fit` keeps its train_function.

        A new one is made when the model was recompiled or its compiled state changed. The cache
        is keyed weakly by the model, so the accumulators never become model state.
        """
        key = (apply_partial, id(model.optimizer), id(compat.loss_tracker(model)),
               model.run_eagerly, model.jit_compile, tuple(map(id, model.trainable_variables)))
        cached = _WINDOW_STEPS.get(model)
        if cached is None or cached[0] != key:
            cached = (key, cls(model, apply_partial))
            _WINDOW_STEPS[model] = cached
        return cached[1]

    def __call__(self, iterator: Any, num_steps: int) -> tuple[int, dict]:
        processed, logs = self._function(iterator, tf.constant(num_steps, tf.int32))
        return int(processed), logs

    def skip(self, iterator: Any, num_steps: int) -> int:
        """Consumes up to `num_steps` micro-batches without training on them; returns how many."""
        processed = 0
        for _ in range(num_steps):
            if not iterator.get_next_as_optional().has_value():
                break
            processed += 1
        return processed

    def _make_function(self) -> Callable:
        model = self.model
        micro_step = self._micro_step
        apply_step = self._apply_step
        if not model.run_eagerly and model.jit_compile:
            micro_step = tf.function(micro_step, jit_compile=True, reduce_retracing=True,
                                     autograph=False)
            apply_step = tf.function(apply_step, jit_compile=True, autograph=False)

        def window(iterator: Any, num_steps: tf.Tensor) -> tuple[tf.Tensor, dict]:
            self.strategy.run(self._zero_step)
            first = iterator.get_next_as_optional()

            def run_window() -> tf.Tensor:
                self.strategy.run(micro_step, args=(first.get_value(), True))

                def cond(step: tf.Tensor, next_inputs: Any) -> tf.Tensor:
                    return tf.logical_and(step < num_steps, next_inputs.has_value())

                def body(step: tf.Tensor, next_inputs: Any) -> tuple[tf.Tensor, Any]:
                    self.strategy.run(micro_step, args=(next_inputs.get_value(), False))
                    following = tf.cond(
                        step + 1 < num_steps,
                        iterator.get_next_as_optional,
                        lambda: next_inputs,
                    )
                    return step + 1, following

                second = tf.cond(
                    num_steps > 1, iterator.get_next_as_optional, lambda: first
                )
                # One micro-step at a time: overlapping iterations ran up to 8% faster on 2 CPU
                # cores but sometimes held two micro-batches' activations (1.36x the memory of
                # Model.fit at the micro-batch instead of 1.02x) and summed in a varying order.
                processed, _ = tf.while_loop(
                    cond, body, [tf.constant(1), second], parallel_iterations=1
                )
                if self.apply_partial:
                    self.strategy.run(apply_step)
                else:
                    tf.cond(
                        tf.equal(processed, num_steps),
                        lambda: self.strategy.run(apply_step),
                        lambda: None,
                    )
                return processed

            processed = tf.cond(first.has_value(), run_window, lambda: tf.constant(0))
            return processed, model.get_metrics_result()

        if not model.run_eagerly:
            window = tf.function(window, reduce_retracing=True, autograph=False)
        return window

    def _micro_step(self, data: Any, first: bool) -> None:
        """Forward and backward pass of one micro-batch; adds c_i * grad(L_i) to the accumulators."""
        model = self.model
        data = tf.nest.map_structure(
            lambda v: None if isinstance(v, tf.experimental.Optional) else v, data
        )
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        batch_size = tf.shape(next(t for t in tf.nest.flatten(x) if t is not None))[0]
        output_metric_states = self._loss_metrics.snapshot()
        with tf.GradientTape() as tape:
            y_pred = model(x, training=True)
            loss = self._compute_loss(x, y, y_pred, sample_weight)
            if self.reduction == "sum":
                # Summed losses are not divided across replicas; regularization is (by Keras),
                # and it enters the window's sum once: on its first micro-step.
                if not first and model.losses:
                    loss -= regularization(model)
                reported = loss
                weight = tf.constant(1.0)
            else:
                loss = compat.unscale_for_distribution(loss)
                reported = loss
                weight = tf.cast(micro_batch_divisor(self.reduction, y_pred, sample_weight, batch_size),
                                 tf.float32)
            scaled_loss = model.optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled_loss, self._variables) if self._variables else []
        output_count, output_losses = self._loss_metrics.take_back(output_metric_states)
        # Weighting by c_i happens on the unscaled float32 gradient, not inside the tape.
        self._sums.add(gradients, weight, _loss_scale(model.optimizer), tf.stack([
            weight,
            weight * tf.cast(reported, tf.float32),
            tf.cast(batch_size, tf.float32),
            output_count,
            *(weight * output_loss for output_loss in output_losses),
        ]))
        model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def _compute_loss(self, x: Any, y: Any, y_pred: Any, sample_weight: Any) -> tf.Tensor:
        if self._compute_loss_has_training:
            return self.model.compute_loss(x, y, y_pred, sample_weight, training=True)
        return self.model.compute_loss(x, y, y_pred, sample_weight)

    def _zero_step(self) -> None:
        self._sums.zero()

    def _apply_step(self) -> None:
        """One optimizer update with the window's sum of gradients over its global divisor."""
        totals = tf.distribute.get_replica_context().all_reduce(
            tf.distribute.ReduceOp.SUM, tf.identity(self._sums.statistics)
        )
        divisor = tf.constant(1.0) if self.reduction == "sum" else totals[_DIVISOR]
        pairs = self._sums.gradient_pairs(divisor, _loss_scale(self.model.optimizer))
        if pairs:
            self.model.optimizer.apply_gradients(pairs)
        local = tf.identity(self._sums.statistics)
        self._loss_metrics.update(totals[_WEIGHTED_LOSS], totals[_OUTPUT_LOSSES], divisor,
                                  samples=local[_SAMPLES], counted=local[_OUTPUT_COUNT])


def _loss_scale(optimizer: keras.optimizers.Optimizer) -> tf.Tensor | None:
    """The factor `optimizer.scale_loss` multiplies by (dynamic for LossScaleOptimizer), or None."""
    if hasattr(optimizer, "dynamic_scale"):
        return optimizer.dynamic_scale
    return optimizer.loss_scale_factor
