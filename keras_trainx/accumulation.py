"""The compiled accumulation window: micro-steps accumulate locally, then one optimizer update.

One call of `WindowStep` pulls up to `num_steps` micro-batches from a (distributed) iterator, runs
forward and backward passes on each, adds the gradients into per-replica accumulators (no cross-replica
traffic), and then applies their sum once, normalized by the window's GLOBAL normalizer. The result
equals one `Model.fit` step on the concatenation of the window's micro-batches:

    big-batch loss  = (sum of weighted per-element losses) / (the big batch's divisor)
                    = sum_i (c_i / C) * L_i,   L_i = Keras' reduced loss of micro-batch i,
                                              c_i = its divisor, C = sum_i c_i

so each micro-step accumulates `c_i * grad(L_i)` (unscaled, in the variables' dtype, float32 under
mixed precision) and the update divides by `C`. The divisor follows the compiled loss' reduction:
the number of samples (`"sum_over_batch_size"`, `"mean"`), the number of unmasked elements for a
masked output, the sum of the sample weights (`"mean_with_sample_weight"`), or none at all (`"sum"`).
Regularization losses enter once per update: their weights `c_i / C` sum to one (with `"sum"`, only
the first micro-step keeps them).

The loss `Model.fit` reports, and each output's loss of a multi-output model, are updated once per
window with the window's big-batch value, so epoch logs equal those of the big-batch `fit`; the other
metrics update on every micro-batch.
"""

import inspect
import warnings
import weakref

from typing import Any

import keras
import tensorflow as tf

from keras_trainx import compat

_MEAN_REDUCTIONS = ("sum_over_batch_size", "mean")
_REDUCTIONS = (*_MEAN_REDUCTIONS, "mean_with_sample_weight", "sum")
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
        self._with_gradient = [False] * len(self._variables)
        self._loss_tracker = compat.loss_tracker(model)
        self._output_loss_metrics = compat.output_loss_metrics(model)
        self._compute_loss_has_training = (
            "training" in inspect.signature(model.compute_loss).parameters
        )
        self._accumulators, self._statistics = self._create_accumulators()
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

    def _create_accumulators(self):
        """Per-replica (ON_READ) gradient sums and window statistics, owned by no model."""
        with self.strategy.scope():
            accumulators = [
                tf.Variable(
                    tf.zeros(v.shape, v.dtype),
                    trainable=False,
                    name="accumulated_" + v.name.replace("/", "_").replace(":", "_"),
                    synchronization=tf.VariableSynchronization.ON_READ,
                    aggregation=tf.VariableAggregation.SUM,
                )
                for v in self._variables
            ]
            statistics = tf.Variable(
                tf.zeros(4 + len(self._output_loss_metrics)),
                trainable=False,
                name="accumulated_window_statistics",
                synchronization=tf.VariableSynchronization.ON_READ,
                aggregation=tf.VariableAggregation.SUM,
            )
        return accumulators, statistics

    def _make_function(self):
        model = self.model
        micro_step = self._micro_step
        apply_step = self._apply_step
        if not model.run_eagerly and model.jit_compile:
            micro_step = tf.function(micro_step, jit_compile=True, reduce_retracing=True,
                                     autograph=False)
            apply_step = tf.function(apply_step, jit_compile=True, autograph=False)

        def window(iterator, num_steps):
            self.strategy.run(self._zero_step)
            first = iterator.get_next_as_optional()

            def run_window():
                self.strategy.run(micro_step, args=(first.get_value(), True))

                def cond(step, next_inputs):
                    return tf.logical_and(step < num_steps, next_inputs.has_value())

                def body(step, next_inputs):
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

    def _micro_step(self, data, first):
        """Forward and backward pass of one micro-batch; adds c_i * grad(L_i) to the accumulators."""
        model = self.model
        data = tf.nest.map_structure(
            lambda v: None if isinstance(v, tf.experimental.Optional) else v, data
        )
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        batch_size = tf.shape(next(t for t in tf.nest.flatten(x) if t is not None))[0]
        output_metric_states = [[tf.identity(v) for v in m.variables]
                                for m in self._output_loss_metrics]
        with tf.GradientTape() as tape:
            y_pred = model(x, training=True)
            loss = self._compute_loss(x, y, y_pred, sample_weight)
            if self.reduction == "sum":
                # Summed losses are not divided across replicas; regularization is (by Keras),
                # and it enters the window's sum once: on its first micro-step.
                if not first and model.losses:
                    loss -= _regularization(model)
                reported = loss
                weight = tf.constant(1.0)
            else:
                loss = compat.unscale_for_distribution(loss)
                reported = loss
                weight = tf.cast(self._divisor(y_pred, sample_weight, batch_size), tf.float32)
            scaled_loss = model.optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled_loss, self._variables) if self._variables else []
        scale = _loss_scale(model.optimizer)
        for index, (accumulator, gradient) in enumerate(zip(self._accumulators, gradients)):
            if gradient is None:
                continue
            self._with_gradient[index] = True
            gradient = tf.cast(tf.convert_to_tensor(gradient), accumulator.dtype)
            if scale is not None:
                gradient = gradient / tf.cast(scale, gradient.dtype)
            # Weighting by c_i happens on the unscaled float32 gradient, not inside the tape, so
            # that mixed-precision backward passes see the same magnitudes as in Model.fit.
            accumulator.assign_add(gradient * tf.cast(weight, gradient.dtype))
        output_count, output_losses = self._take_output_losses(output_metric_states)
        self._statistics.assign_add(tf.stack([
            weight,
            weight * tf.cast(reported, tf.float32),
            tf.cast(batch_size, tf.float32),
            output_count,
            *(weight * output_loss for output_loss in output_losses),
        ]))
        model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def _take_output_losses(self, states_before):
        """The count and each output's loss of this micro-batch, taken back out of their metrics.

        Keras' compiled loss adds every output's loss to a `Mean` of its own, counting the call as 1
        or as its batch size (Keras versions differ). Here that update is read and undone, so that
        `_apply_step` adds the window's big-batch value once, counted as `Model.fit` would count it.
        """
        count_added, losses = tf.constant(0.0), []
        for metric, before in zip(self._output_loss_metrics, states_before):
            (total, count), (total_before, count_before) = metric.variables, before
            count_added = tf.cast(tf.identity(count) - count_before, tf.float32)
            losses.append((tf.identity(total) - total_before) / count_added)
            total.assign(total_before)
            count.assign(count_before)
        return count_added, losses

    def _compute_loss(self, x, y, y_pred, sample_weight):
        if self._compute_loss_has_training:
            return self.model.compute_loss(x, y, y_pred, sample_weight, training=True)
        return self.model.compute_loss(x, y, y_pred, sample_weight)

    def _divisor(self, y_pred, sample_weight, batch_size):
        """The count Keras' reduction divides this micro-batch's weighted loss sum by (c_i)."""
        masks = [m for m in map(compat.keras_mask, tf.nest.flatten(y_pred)) if m is not None]
        if masks and len(tf.nest.flatten(y_pred)) != 1:
            raise ValueError(
                "fit_accumulated supports masked outputs (e.g. Embedding(mask_zero=True)) only for "
                "single-output models: each masked loss needs its own normalizer. Train this model "
                "with model.fit, or split it so that one output carries the mask."
            )
        mask = tf.cast(masks[0], tf.float32) if masks else None
        if self.reduction == "mean_with_sample_weight" and sample_weight is not None:
            weights = tf.cast(tf.nest.flatten(sample_weight)[0], tf.float32)
            if mask is not None:
                while len(weights.shape) < len(mask.shape):
                    weights = tf.expand_dims(weights, -1)
                weights = weights * mask
            return tf.reduce_sum(weights)
        if mask is not None:
            return tf.reduce_sum(mask)
        return batch_size

    def _zero_step(self):
        for accumulator in self._accumulators:
            accumulator.assign(tf.zeros_like(accumulator))
        self._statistics.assign(tf.zeros_like(self._statistics))

    def _apply_step(self):
        """One optimizer update with the window's sum of gradients over its global divisor."""
        totals = tf.distribute.get_replica_context().all_reduce(
            tf.distribute.ReduceOp.SUM, tf.identity(self._statistics)
        )
        divisor = tf.constant(1.0) if self.reduction == "sum" else totals[_DIVISOR]
        scale = _loss_scale(self.model.optimizer)
        pairs = []
        for accumulator, variable, has_gradient in zip(
            self._accumulators, self._variables, self._with_gradient
        ):
            if not has_gradient:
                continue
            gradient = tf.identity(accumulator) / tf.cast(divisor, accumulator.dtype)
            if scale is not None:
                gradient = gradient * tf.cast(scale, gradient.dtype)
            pairs.append((gradient, variable))
        if pairs:
            self.model.optimizer.apply_gradients(pairs)
        samples = tf.identity(self._statistics)[_SAMPLES]
        self._loss_tracker.update_state(
            tf.math.divide_no_nan(totals[_WEIGHTED_LOSS], divisor), sample_weight=samples
        )
        # Keras counted each call as 1 or as its batch size: the big batch counts as 1 or as all
        # of the window's samples.
        counted = tf.identity(self._statistics)[_OUTPUT_COUNT]
        output_weight = tf.where(tf.equal(counted, samples), samples, 1.0)
        for metric, output_loss in zip(self._output_loss_metrics,
                                       tf.unstack(totals[_OUTPUT_LOSSES])):
            metric.update_state(tf.math.divide_no_nan(output_loss, divisor),
                                sample_weight=output_weight)


def loss_reduction(model: keras.Model) -> str:
    """The one reduction all of `model`'s compiled losses share, or a `ValueError` with the fix.

    Losses given as strings or functions reduce as Keras wraps them: `"sum_over_batch_size"`. A
    model with its own `compute_loss` is taken to average over its samples.
    """
    if type(model).compute_loss is not keras.Model.compute_loss:
        return "sum_over_batch_size"
    losses = [loss for loss in keras.tree.flatten(model.loss) if loss is not None]
    reductions = {getattr(loss, "reduction", "sum_over_batch_size") for loss in losses}
    reductions = {"sum_over_batch_size" if r in _MEAN_REDUCTIONS else r for r in reductions}
    if not reductions:
        return "sum_over_batch_size"
    unsupported = reductions - set(_REDUCTIONS)
    if unsupported:
        raise ValueError(
            f"fit_accumulated cannot accumulate a loss with reduction={sorted(map(str, unsupported))}: "
            "the per-sample losses it returns have no update to sum into. Compile with one of "
            f"{_REDUCTIONS}."
        )
    if len(reductions) > 1:
        raise ValueError(
            f"fit_accumulated needs one reduction for all compiled losses; got {sorted(reductions)}. "
            "Each reduction divides by another count, which would need one set of accumulators "
            "each. Compile every output's loss with the same reduction."
        )
    (reduction,) = reductions
    if reduction == "mean_with_sample_weight" and len(losses) > 1:
        raise ValueError(
            "fit_accumulated supports reduction='mean_with_sample_weight' only for single-output "
            "models: each output's sample weights give it its own divisor. Use "
            "reduction='sum_over_batch_size' or train this model with model.fit."
        )
    return reduction


def _regularization(model):
    """The regularization part of `compute_loss`, as Keras adds it (scaled across replicas)."""
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    total = tf.add_n([tf.reduce_sum(tf.cast(loss, tf.float32)) for loss in model.losses])
    return total / replicas


def _loss_scale(optimizer):
    """The factor `optimizer.scale_loss` multiplies by (dynamic for LossScaleOptimizer), or None."""
    if hasattr(optimizer, "dynamic_scale"):
        return optimizer.dynamic_scale
    return optimizer.loss_scale_factor
