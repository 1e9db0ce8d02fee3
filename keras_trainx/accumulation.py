"""The compiled accumulation window: micro-steps accumulate locally, then one optimizer update.

One call of `WindowStep` pulls up to `accum_steps` micro-batches from a (distributed) iterator, runs
forward and backward passes on each, adds the gradients into per-replica accumulators (no cross-replica
traffic), and then applies their sum once, normalized by the window's GLOBAL sample count. The result
equals one `Model.fit` step on the concatenation of the window's micro-batches:

    big-batch loss  = (sum of weighted per-sample losses) / (samples in the window)
                    = sum_i (c_i / C) * L_i,   L_i = Keras' mean loss of micro-batch i,
                                              c_i = its normalizer, C = sum_i c_i

so each micro-step accumulates `c_i * grad(L_i)` (unscaled, in the variables' dtype, float32 under
mixed precision) and the update divides by `C`. Regularization losses are part of every `L_i`; their
weights `c_i / C` sum to one, so they enter once per update.
"""

import tensorflow as tf
from keras.src import tree
from keras.src.backend.common.masking import get_keras_mask
from keras.src.losses import loss as loss_module
from keras.src.trainers import trainer as base_trainer
from keras.src.trainers.data_adapters import data_adapter_utils

_MEAN_REDUCTIONS = ("sum_over_batch_size", "mean")
_CACHE_ATTRIBUTE = "_keras_trainx_window_step"


class WindowStep:
    """Runs one accumulation window per call, compiled as Keras compiles `train_step`.

    Args:
        model: a compiled `keras.Model` (built under the strategy scope it trains with).
        apply_partial: whether a window that ends early (the data ran out) is applied as its own
            update, normalized by its own samples; if False it is discarded.

    Calling it with `(iterator, num_steps)` runs a window of up to `num_steps` micro-batches and
    returns `(processed, logs)`: how many micro-batches were consumed and the model's metric results.
    """

    def __init__(self, model, apply_partial):
        self.model = model
        self.apply_partial = apply_partial
        self.strategy = model.distribute_strategy
        self._variables = list(model.trainable_variables)
        self._with_gradient = [False] * len(self._variables)
        self._accumulators, self._normalizer = self._create_accumulators()
        self._function = self._make_function()

    @classmethod
    def for_model(cls, model, apply_partial):
        """The model's cached window step, traced once, as `Model.fit` keeps its train_function.

        A new one is made when the model was recompiled or its compiled state changed. The cache
        is set with `object.__setattr__`, past Keras' attribute tracking, so the accumulators never
        become model state.
        """
        key = (apply_partial, id(model.optimizer), id(model._compile_loss),
               model.run_eagerly, model.jit_compile, tuple(map(id, model.trainable_variables)))
        cached = getattr(model, _CACHE_ATTRIBUTE, None)
        if cached is None or cached[0] != key:
            cached = (key, cls(model, apply_partial))
            object.__setattr__(model, _CACHE_ATTRIBUTE, cached)
        return cached[1]

    def __call__(self, iterator, num_steps):
        processed, logs = self._function(iterator, tf.constant(num_steps, tf.int32))
        return int(processed), logs

    def _create_accumulators(self):
        """Per-replica (ON_READ) gradient sums and normalizer, owned by no model or optimizer."""
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
            normalizer = tf.Variable(
                0.0,
                trainable=False,
                name="accumulated_normalizer",
                synchronization=tf.VariableSynchronization.ON_READ,
                aggregation=tf.VariableAggregation.SUM,
            )
        return accumulators, normalizer

    def _make_function(self):
        model = self.model
        micro_step = self._micro_step
        apply_step = self._apply_step
        discard_step = self._discard_step
        if not model.run_eagerly and model.jit_compile:
            micro_step = tf.function(micro_step, jit_compile=True, reduce_retracing=True)
            apply_step = tf.function(apply_step, jit_compile=True)

        def window(iterator, num_steps):
            first = iterator.get_next_as_optional()

            def run_window():
                self.strategy.run(micro_step, args=(first.get_value(),))

                def cond(step, next_inputs):
                    return tf.logical_and(step < num_steps, next_inputs.has_value())

                def body(step, next_inputs):
                    self.strategy.run(micro_step, args=(next_inputs.get_value(),))
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
                        lambda: self.strategy.run(discard_step),
                    )
                return processed

            processed = tf.cond(first.has_value(), run_window, lambda: tf.constant(0))
            return processed, model.get_metrics_result()

        if not model.run_eagerly:
            window = tf.function(window, reduce_retracing=True)
        return window

    def _micro_step(self, data):
        """Forward and backward pass of one micro-batch; adds c_i * grad(L_i) to the accumulators."""
        model = self.model
        x, y, sample_weight = data_adapter_utils.unpack_x_y_sample_weight(data)
        batch_size = tf.shape(next(t for t in tree.flatten(x) if t is not None))[0]
        with tf.GradientTape() as tape:
            if model._call_has_training_arg:
                y_pred = model(x, training=True)
            else:
                y_pred = model(x)
            loss = model._compute_loss(
                x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True
            )
            loss = loss_module.unscale_loss_for_distribution(loss)
            model._loss_tracker.update_state(loss, sample_weight=batch_size)
            scaled_loss = model.optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled_loss, self._variables)
        # Weighting by c_i happens on the unscaled float32 gradient, not inside the tape, so that
        # mixed-precision backward passes see the same magnitudes as in Model.fit.
        normalizer = tf.cast(self._micro_normalizer(y_pred, batch_size), tf.float32)
        scale = _loss_scale(model.optimizer)
        for index, (accumulator, gradient) in enumerate(zip(self._accumulators, gradients)):
            if gradient is None:
                continue
            self._with_gradient[index] = True
            gradient = tf.cast(tf.convert_to_tensor(gradient), accumulator.dtype)
            if scale is not None:
                gradient = gradient / tf.cast(scale, gradient.dtype)
            accumulator.assign_add(gradient * tf.cast(normalizer, gradient.dtype))
        self._normalizer.assign_add(normalizer)
        model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def _micro_normalizer(self, y_pred, batch_size):
        """The count Keras' loss divides this micro-batch's weighted loss sum by (c_i)."""
        model = self.model
        compile_loss = model._compile_loss
        custom_loss = type(model).compute_loss is not base_trainer.Trainer.compute_loss
        if compile_loss is None or custom_loss:
            return batch_size
        for _, loss_fn, _, _ in compile_loss._flat_losses:
            reduction = getattr(loss_fn, "reduction", "sum_over_batch_size")
            if reduction not in _MEAN_REDUCTIONS:
                raise ValueError(
                    "fit_accumulated needs losses that average over the batch; the compiled loss "
                    f"{getattr(loss_fn, 'name', loss_fn)!r} has reduction={reduction!r}. Compile "
                    "with reduction='sum_over_batch_size' (Keras' default)."
                )
        masks = [m for m in map(get_keras_mask, tree.flatten(y_pred)) if m is not None]
        if not masks:
            return batch_size
        if len(tree.flatten(y_pred)) != 1:
            raise ValueError(
                "fit_accumulated supports masked outputs (e.g. Embedding(mask_zero=True)) only for "
                "single-output models: each masked loss needs its own normalizer. Train this model "
                "with model.fit, or split it so that one output carries the mask."
            )
        return tf.reduce_sum(tf.cast(masks[0], tf.float32))

    def _apply_step(self):
        """One optimizer update with the window's sum of gradients over its global normalizer."""
        total = tf.distribute.get_replica_context().all_reduce(
            tf.distribute.ReduceOp.SUM, tf.identity(self._normalizer)
        )
        scale = _loss_scale(self.model.optimizer)
        pairs = []
        for accumulator, variable, has_gradient in zip(
            self._accumulators, self._variables, self._with_gradient
        ):
            if not has_gradient:
                continue
            gradient = tf.identity(accumulator) / tf.cast(total, accumulator.dtype)
            if scale is not None:
                gradient = gradient * tf.cast(scale, gradient.dtype)
            pairs.append((gradient, variable))
        self.model.optimizer.apply_gradients(pairs)
        self._discard_step()

    def _discard_step(self):
        for accumulator in self._accumulators:
            accumulator.assign(tf.zeros_like(accumulator))
        self._normalizer.assign(0.0)


def _loss_scale(optimizer):
    """The factor `optimizer.scale_loss` multiplies by (dynamic for LossScaleOptimizer), or None."""
    if hasattr(optimizer, "dynamic_scale"):
        return optimizer.dynamic_scale
    return optimizer.loss_scale_factor
