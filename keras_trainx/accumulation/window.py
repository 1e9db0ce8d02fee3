"""The compiled accumulation window: micro-steps accumulate locally, then one optimizer update.

One call of `WindowStep` pulls up to `num_steps` micro-batches from a (distributed) iterator, runs
forward and backward passes on each, adds the gradients into per-replica accumulators (no cross-replica
traffic), and then applies their sum once, normalized by the window's GLOBAL counts. The result
equals one `Model.fit` step on the concatenation of the window's micro-batches:

    big-batch loss  = (sum of weighted per-element losses) / (the big batch's divisor)
                    = sum_i (c_i / C) * L_i,   L_i = Keras' reduced loss of micro-batch i,
                                              c_i = its divisor, C = sum_i c_i

so each micro-step accumulates `c_i * grad(L_i)` (unscaled, in the variables' dtype, float32 under
mixed precision) and the update divides by `C` (`keras_trainx.accumulation.loss_normalization` finds `c_i`, and
splits off the losses layers add, which the big batch counts differently). Weight penalties enter
once per update: their weights `c_i / C` sum to one (with `"sum"`, only the first micro-step keeps
them).

The loss `Model.fit` reports, and each output's loss of a multi-output model, are updated once per
window with the window's big-batch value (`keras_trainx.accumulation.window_metrics`), so epoch logs equal those
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
from keras_trainx.accumulation.accumulators import Accumulators, squared_norm, unscaled
from keras_trainx.accumulation.loss_divisor import recording_loss_divisor
from keras_trainx.accumulation.loss_normalization import DIVISOR, ONE, SAMPLES, loss_reduction, split_loss
from keras_trainx.accumulation.window_metrics import WindowLossMetrics

_WINDOW_STEPS: "weakref.WeakKeyDictionary[keras.Model, tuple]" = weakref.WeakKeyDictionary()


class WindowStatistics:
    """Names and positions of the window's statistics, summed across replicas in one all-reduce.

    `divisor` (C), `samples` (N), the numerators of the big batch's loss per group (`divisor_loss`
    = sum c_i * L_i, `samples_loss`, `one_loss`), `output_count` (what Keras added to an output's
    loss metric); for the noise scale, the micro-steps' `micro_norms` (sum |g_i|^2),
    `micro_inverse_sizes` (sum 1/b_i) and `micro_steps`, and each replica's unbiased estimates
    `noise_trace` (tr(Sigma)) and `noise_gradient` (|G|^2) with `noise_replicas` (replicas that made
    one); then each output's sum c_i * L_ik.
    """

    NAMES = ("divisor", "samples", "divisor_loss", "samples_loss", "one_loss", "output_count",
             "micro_norms", "micro_inverse_sizes", "micro_steps", "noise_trace", "noise_gradient",
             "noise_replicas")

    def __init__(self, num_outputs: int) -> None:
        self.size = len(self.NAMES) + num_outputs
        self.outputs = slice(len(self.NAMES), None)

    def __getattr__(self, name: str) -> int:
        try:
            return self.NAMES.index(name)
        except ValueError:
            raise AttributeError(name) from None

    def vector(self, **values: tf.Tensor) -> tf.Tensor:
        """A statistics vector holding `values` (by name; `outputs`: a list) and zeros elsewhere."""
        outputs = values.pop("outputs", [])
        entries = [tf.cast(values.get(name, 0.0), tf.float32) for name in self.NAMES]
        return tf.stack([*entries, *(tf.cast(o, tf.float32) for o in outputs)])


class _MissingGroups(Exception):
    """Raised while tracing when the model's losses need accumulator groups not yet created."""

    def __init__(self, groups: set[str]) -> None:
        super().__init__(sorted(groups))
        self.groups = groups


class WindowStep:
    """Runs one accumulation window per call, compiled as Keras compiles `train_step`.

    Args:
        model: a compiled, built `keras.Model` (built under the strategy scope it trains with).
        apply_partial: whether a window that ends early (the data ran out) is applied as its own
            update, normalized by its own samples; if False it is discarded.

    Calling it with `(iterator, num_steps, measure_noise)` runs a window of up to `num_steps`
    micro-batches and returns `(processed, logs, statistics)`: how many micro-batches were consumed,
    the model's metric results and the window's statistics (all replicas) as a numpy vector (see
    `WindowStatistics`). With `measure_noise=True` the window also estimates the gradient noise scale
    (McCandlish et al. 2018, appendix A) from its micro-batch and window gradients; each value of
    `measure_noise` has its own trace, made when first asked for, so windows that do not measure run
    none of its ops.
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
        self.statistics = WindowStatistics(len(self._loss_metrics))
        self._sums = Accumulators(self.strategy, self._variables, self.statistics.size)
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

    def __call__(self, iterator: Any, num_steps: int, measure_noise: bool = False) -> tuple[int, dict, Any]:
        try:
            processed, logs, statistics = self._function(iterator, tf.constant(num_steps, tf.int32),
                                                         measure_noise)
        except _MissingGroups as missing:  # found while tracing: nothing ran, no data was read
            for group in missing.groups:
                self._sums.add_group(group)
            self._function = self._make_function()
            processed, logs, statistics = self._function(iterator, tf.constant(num_steps, tf.int32),
                                                         measure_noise)
        return int(processed), logs, statistics.numpy()

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

        def window(iterator: Any, num_steps: tf.Tensor, measure_noise: bool) -> tuple[tf.Tensor, dict, tf.Tensor]:
            self.strategy.run(self._zero_step)

            def cond(step: tf.Tensor, inputs: Any) -> tf.Tensor:
                return tf.logical_and(step < num_steps, inputs.has_value())

            def body(step: tf.Tensor, inputs: Any) -> tuple[tf.Tensor, Any]:
                self.strategy.run(micro_step, args=(inputs.get_value(), tf.equal(step, 0), measure_noise))
                following = tf.cond(step + 1 < num_steps, iterator.get_next_as_optional, lambda: inputs)
                return step + 1, following

            # One traced micro-step serves every micro-batch of the window. One micro-step at a
            # time: overlapping iterations ran up to 8% faster on 2 CPU cores but sometimes held
            # two micro-batches' activations (1.36x the memory of Model.fit at the micro-batch
            # instead of 1.02x) and summed in a varying order.
            processed, _ = tf.while_loop(
                cond, body, [tf.constant(0), iterator.get_next_as_optional()], parallel_iterations=1
            )
            applies = processed > 0
            if not self.apply_partial:
                applies = tf.logical_and(applies, tf.equal(processed, num_steps))
            totals = tf.cond(applies, lambda: self._apply(apply_step, measure_noise),
                             lambda: tf.zeros(self.statistics.size))
            return processed, model.get_metrics_result(), totals

        if not model.run_eagerly:
            window = tf.function(window, reduce_retracing=True, autograph=False)
        return window

    def _apply(self, apply_step: Callable, measure_noise: bool) -> tf.Tensor:
        totals = self.strategy.run(apply_step, args=(measure_noise,))
        return self.strategy.experimental_local_results(totals)[0]

    def _micro_step(self, data: Any, first: tf.Tensor, measure_noise: bool) -> None:
        """Forward and backward pass of one micro-batch; adds its weighted gradients to the sums."""
        model = self.model
        data = tf.nest.map_structure(
            lambda v: None if isinstance(v, tf.experimental.Optional) else v, data
        )
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        batch_size = tf.shape(next(t for t in tf.nest.flatten(x) if t is not None))[0]
        output_metric_states = self._loss_metrics.snapshot()
        optimizer = model.optimizer
        with tf.GradientTape(persistent=len(self._sums.gradients) > 1) as tape:
            with recording_loss_divisor() as recorded_divisors:
                y_pred = model(x, training=True)
                loss = self._compute_loss(x, y, y_pred, sample_weight)
            if self.reduction != "sum":
                loss = compat.unscale_for_distribution(loss)
            parts = split_loss(model, self.reduction, loss, y_pred, sample_weight, batch_size,
                               first, recorded_divisors)
            missing = set(parts.groups) - set(self._sums.gradients)
            if missing and not tf.executing_eagerly():
                raise _MissingGroups(missing)
            for group in missing:  # run eagerly: create them now
                self._sums.add_group(group)
            scaled = {group: optimizer.scale_loss(objective)
                      for group, (objective, _) in parts.groups.items()}
        # Weighting by c_i happens on the unscaled float32 gradient, not inside the tape.
        unscale = _loss_scale(optimizer)
        micro_gradient: list[tf.Tensor | None] = [None] * len(self._variables)
        for group, (_, weight) in parts.groups.items():
            gradients = [unscaled(g, v.dtype, unscale) for g, v in
                         zip(tape.gradient(scaled[group], self._variables), self._variables)]
            self._sums.add(group, gradients, weight)
            if measure_noise:
                dense = [None if g is None else tf.convert_to_tensor(g) for g in gradients]
                micro_gradient = [g if m is None else (m if g is None else m + g)
                                  for m, g in zip(micro_gradient, dense)]
        del tape
        output_count, output_losses = self._loss_metrics.take_back(output_metric_states)
        samples = tf.cast(batch_size, tf.float32)
        statistics = {
            "divisor": parts.divisor,
            "samples": samples,
            "output_count": output_count,
            "outputs": [parts.divisor * output_loss for output_loss in output_losses],
        }
        for group, name in ((DIVISOR, "divisor_loss"), (SAMPLES, "samples_loss"), (ONE, "one_loss")):
            if group in parts.groups:
                objective, weight = parts.groups[group]
                statistics[name] = weight * tf.cast(objective, tf.float32)
        if measure_noise:
            statistics["micro_norms"] = squared_norm(micro_gradient)
            statistics["micro_inverse_sizes"] = tf.math.reciprocal_no_nan(samples)
            statistics["micro_steps"] = 1.0
        self._sums.statistics.assign_add(self.statistics.vector(**statistics))
        model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def _compute_loss(self, x: Any, y: Any, y_pred: Any, sample_weight: Any) -> tf.Tensor:
        if self._compute_loss_has_training:
            return self.model.compute_loss(x, y, y_pred, sample_weight, training=True)
        return self.model.compute_loss(x, y, y_pred, sample_weight)

    def _zero_step(self) -> None:
        self._sums.zero()

    def _apply_step(self, measure_noise: bool) -> tf.Tensor:
        """One optimizer update with the window's gradient sums over their global counts."""
        names = self.statistics
        local = tf.identity(self._sums.statistics)
        if measure_noise:
            local = self._with_noise_estimates(local)
        totals = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, local)
        divisor = tf.constant(1.0) if self.reduction == "sum" else totals[names.divisor]
        divisors = {DIVISOR: divisor, SAMPLES: totals[names.samples], ONE: tf.constant(1.0)}
        scale = _loss_scale(self.model.optimizer)
        pairs = [(gradient if scale is None else gradient * tf.cast(scale, gradient.dtype), variable)
                 for gradient, variable in zip(self._sums.window_gradients(divisors), self._variables)
                 if gradient is not None]
        if pairs:
            self.model.optimizer.apply_gradients(pairs)
        loss = (tf.math.divide_no_nan(totals[names.divisor_loss], divisor)
                + tf.math.divide_no_nan(totals[names.samples_loss], totals[names.samples])
                + totals[names.one_loss])
        self._loss_metrics.update(loss, totals[names.outputs], divisor,
                                  samples=local[names.samples], counted=local[names.output_count])
        return totals

    def _with_noise_estimates(self, local: tf.Tensor) -> tf.Tensor:
        """`local` with this replica's unbiased estimates of tr(Sigma) and |G|^2 in the noise entries.

        With `a` the mean of the micro-batch gradients' squared norms, `h` the mean of their
        `1/b_i` and `|G_B|^2` the squared norm of this replica's window gradient (`B` samples):
        `E[a] = |G|^2 + tr(Sigma) h` and `E[|G_B|^2] = |G|^2 + tr(Sigma) / B`, solved for both.
        A window of one micro-batch carries no estimate.
        """
        names = self.statistics
        steps = local[names.micro_steps]
        samples = local[names.samples]
        divisor = tf.constant(1.0) if self.reduction == "sum" else local[names.divisor]
        divisors = {DIVISOR: divisor, SAMPLES: samples, ONE: tf.constant(1.0)}
        window = self._sums.window_squared_norm(divisors)
        mean_squares = tf.math.divide_no_nan(local[names.micro_norms], steps)
        spread = (tf.math.divide_no_nan(local[names.micro_inverse_sizes], steps)
                  - tf.math.reciprocal_no_nan(samples))
        valid = tf.logical_and(steps > 1.0, spread > 0.0)
        trace = tf.where(valid, tf.math.divide_no_nan(mean_squares - window, spread), 0.0)
        gradient = tf.where(valid, window - tf.math.divide_no_nan(trace, samples), 0.0)
        noise = tf.stack([trace, gradient, tf.cast(valid, tf.float32)])
        return tf.concat([local[:names.noise_trace], noise, local[names.noise_replicas + 1:]], axis=0)


def _loss_scale(optimizer: keras.optimizers.Optimizer) -> tf.Tensor | None:
    """The factor `optimizer.scale_loss` multiplies by (dynamic for LossScaleOptimizer), or None."""
    if hasattr(optimizer, "dynamic_scale"):
        return optimizer.dynamic_scale
    return optimizer.loss_scale_factor
