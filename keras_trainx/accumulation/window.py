"""The compiled accumulation window: micro-steps accumulate locally, then one optimizer update.

One call of `WindowStep` pulls up to `num_steps` micro-batches from a (distributed) iterator, runs
forward and backward passes on each, adds the gradients into per-replica accumulators (no cross-replica
traffic), and then applies their sum once, normalized by the window's GLOBAL counts. The result
equals one `Model.fit` step on the concatenation of the window's micro-batches:

    big-batch loss  = (sum of weighted per-element losses) / (the big batch's divisor)
                    = sum_i (c_i / C) * L_i,   L_i = Keras' reduced loss of micro-batch i,
                                              c_i = its divisor, C = sum_i c_i

so each micro-step accumulates `c_i * grad(L_i)` (unscaled, in the variables' dtype, float32 under
mixed precision; the first one its gradient alone, multiplied by `c_1` when a second one comes, so
that a window of one micro-step applies exactly `Model.fit`'s gradient) and the update divides by
`C` (`keras_trainx.accumulation.loss_normalization` finds `c_i`, and splits off the losses layers
add, which the big batch counts differently). Weight penalties, and `add_loss` terms with no input in
them, enter once per update: their weights `c_i / C` sum to one (with `"sum"`, only the first
micro-step keeps them).

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
import numpy as np
import tensorflow as tf

from keras_trainx import compat
from keras_trainx.accumulation.accumulators import Accumulators, half_squared_norm, unscaled
from keras_trainx.accumulation.loss_divisor import recording_loss_divisor
from keras_trainx.accumulation.input_dependence import depends_on_inputs, traced_dependence
from keras_trainx.accumulation.loss_normalization import (
    ACTIVITY, BATCH_SUM, DIVISOR, INPUT_FREE, ONE, SAMPLES, loss_reduction, split_loss)
from keras_trainx.accumulation.window_metrics import WindowLossMetrics

_WINDOW_STEPS: "weakref.WeakKeyDictionary[keras.Model, tuple]" = weakref.WeakKeyDictionary()


class WindowStatistics:
    """Names and positions of the window's statistics, summed across replicas in one all-reduce.

    `divisor` (C), `samples` (N), the numerators of the big batch's loss per group (`divisor_loss`
    = sum c_i * L_i, `samples_loss`, `one_loss`), `output_count` (what Keras added to an output's
    loss metric); for the noise scale, the micro-steps' `micro_half_norms` (sum |g_i|^2 / 2),
    `micro_inverse_sizes` (sum 1/b_i) and `micro_steps`; then each output's sum c_i * L_ik; then,
    in a window that measures the noise scale, one row of `NOISE` per replica (`replicas` rows,
    zeros elsewhere): that replica's own micro-step sums and samples, and the window gradient's
    squared norm as `2 * window_half_norm / window_divisor**2` (see `GradientNoiseScale.update`).

    Args:
        num_outputs: the model's outputs with a loss metric of their own.
        replicas: the replicas the window runs on (`strategy.num_replicas_in_sync`).
    """

    NAMES = ("divisor", "samples", "divisor_loss", "samples_loss", "one_loss", "output_count",
             "micro_half_norms", "micro_inverse_sizes", "micro_steps")
    NOISE = ("micro_half_norms", "micro_inverse_sizes", "micro_steps", "samples", "window_divisor",
             "window_half_norm")

    def __init__(self, num_outputs: int, replicas: int = 1) -> None:
        self.replicas = replicas
        self.outputs = slice(len(self.NAMES), len(self.NAMES) + num_outputs)
        self.noise = slice(self.outputs.stop, self.outputs.stop + len(self.NOISE) * replicas)
        self.size = self.noise.stop

    def __getattr__(self, name: str) -> int:
        try:
            return self.NAMES.index(name)
        except ValueError:
            raise AttributeError(name) from None

    def vector(self, **values: tf.Tensor) -> tf.Tensor:
        """A statistics vector holding `values` (by name; `outputs`: a list) and zeros elsewhere."""
        outputs = values.pop("outputs", [])
        entries = [tf.cast(values.get(name, 0.0), tf.float32) for name in self.NAMES]
        noise = [0.0] * (self.noise.stop - self.noise.start)
        return tf.stack([*entries, *(tf.cast(o, tf.float32) for o in outputs), *noise])

    def noise_rows(self, statistics: Any) -> Any:
        """The `NOISE` rows of a (numpy) statistics vector, one per replica, as float64."""
        return np.asarray(statistics[self.noise], np.float64).reshape(self.replicas, len(self.NOISE))


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
    `WindowStatistics`). With `measure_noise=True` the window also measures what the gradient noise
    scale's estimates need (McCandlish et al. 2018, appendix A): the squared norms of its micro-batch
    and window gradients, per replica (`GradientNoiseScale` estimates from them); each value of
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
        self._default_compute_loss = type(model).compute_loss is keras.Model.compute_loss
        self._eager_dependence: list[bool] | None = None
        self.statistics = WindowStatistics(len(self._loss_metrics), self.strategy.num_replicas_in_sync)
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
        if not model.run_eagerly:
            # One traced micro-step serves every micro-batch of the window (both call sites below).
            micro_step = tf.function(micro_step, jit_compile=bool(model.jit_compile),
                                     reduce_retracing=True, autograph=False)
            if model.jit_compile:
                apply_step = tf.function(apply_step, jit_compile=True, autograph=False)

        def window(iterator: Any, num_steps: tf.Tensor, measure_noise: bool) -> tuple[tf.Tensor, dict, tf.Tensor]:
            self.strategy.run(self._zero_step)

            def cond(step: tf.Tensor, inputs: Any) -> tf.Tensor:
                return tf.logical_and(step < num_steps, inputs.has_value())

            def run(step: tf.Tensor, inputs: Any) -> tf.Tensor:
                self.strategy.run(micro_step, args=(inputs.get_value(), step, measure_noise))
                return step + 1

            def body(step: tf.Tensor, inputs: Any) -> tuple[tf.Tensor, Any]:
                step = run(step, inputs)
                following = tf.cond(step < num_steps, iterator.get_next_as_optional, lambda: inputs)
                return step, following

            # The first micro-step runs outside the loop: TensorFlow's graph optimizer (its
            # arithmetic and constant-folding passes) rewrites a step inside a loop otherwise than
            # Model.fit's, which moved a window of one micro-step by up to 6e-8 from Model.fit's
            # update. Then one micro-step at a time: overlapping iterations ran up to 8% faster on
            # 2 CPU cores but sometimes held two micro-batches' activations (1.36x the memory of
            # Model.fit at the micro-batch instead of 1.02x) and summed in a varying order.
            first = iterator.get_next_as_optional()
            step = tf.cond(first.has_value(), lambda: run(tf.constant(0), first), lambda: tf.constant(0))
            following = tf.cond(tf.logical_and(step > 0, step < num_steps),
                                iterator.get_next_as_optional, lambda: first)
            processed, _ = tf.while_loop(cond, body, [step, following], parallel_iterations=1)
            applies = processed > 0
            if not self.apply_partial:
                applies = tf.logical_and(applies, tf.equal(processed, num_steps))
            totals = tf.cond(applies, lambda: self._apply(apply_step, processed, measure_noise),
                             lambda: tf.zeros(self.statistics.size))
            return processed, model.get_metrics_result(), totals

        if not model.run_eagerly:
            window = tf.function(window, reduce_retracing=True, autograph=False)
        return window

    def _apply(self, apply_step: Callable, processed: tf.Tensor, measure_noise: bool) -> tf.Tensor:
        totals = self.strategy.run(apply_step, args=(processed, measure_noise))
        return self.strategy.experimental_local_results(totals)[0]

    def _micro_step(self, data: Any, step: tf.Tensor, measure_noise: bool) -> None:
        """Forward and backward pass of the window's micro-batch `step`; adds its weighted gradients."""
        model = self.model
        first = tf.equal(step, 0)
        data = tf.nest.map_structure(
            lambda v: None if isinstance(v, tf.experimental.Optional) else v, data
        )
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        batch_size = tf.shape(next(t for t in tf.nest.flatten(x) if t is not None))[0]
        output_metric_states = self._loss_metrics.snapshot()
        optimizer = model.optimizer
        # Run eagerly, the first micro-step may find a group the sums do not have yet.
        persistent = len(self._sums.gradients) > 1 or tf.executing_eagerly()
        with tf.GradientTape(persistent=persistent) as tape:
            with recording_loss_divisor() as recorded_divisors:
                y_pred = model(x, training=True)
                loss = self._compute_loss(x, y, y_pred, sample_weight)
            if self.reduction != "sum":
                loss = compat.unscale_for_distribution(loss)
            with tape.stop_recording():
                added = self._added_losses(x)
            parts = split_loss(model, self.reduction, loss, y_pred, sample_weight, batch_size,
                               first, recorded_divisors, added)
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
        tf.cond(tf.equal(step, 1), self._weigh_first, lambda: tf.constant(False))
        for group, (_, weight) in parts.groups.items():
            gradients = [unscaled(g, v.dtype, unscale) for g, v in
                         zip(tape.gradient(scaled[group], self._variables), self._variables)]
            self._sums.add(group, gradients, weight, step)
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
            "outputs": [parts.groups[DIVISOR][1] * output_loss for output_loss in output_losses],
        }
        for group, name in ((DIVISOR, "divisor_loss"), (SAMPLES, "samples_loss"), (ONE, "one_loss")):
            if group in parts.groups:
                objective, weight = parts.groups[group]
                statistics[name] = weight * tf.cast(objective, tf.float32)
        if measure_noise:
            statistics["micro_half_norms"] = half_squared_norm(micro_gradient)
            statistics["micro_inverse_sizes"] = tf.math.reciprocal_no_nan(samples)
            statistics["micro_steps"] = 1.0
        self._sums.statistics.assign_add(self.statistics.vector(**statistics))
        model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def _added_losses(self, x: Any) -> list[tuple[tf.Tensor, str]]:
        """The losses the layers added in the call on `x`, each with its kind (see `split_loss`).

        Whether an `add_loss` term depends on `x` is read from the traced graph; run eagerly, the
        forward pass is traced once for it (after this call's losses were taken).
        """
        if not self._default_compute_loss:
            return []
        added = compat.forward_losses(self.model)
        terms = [loss for loss, from_activity in added if not from_activity]
        if not terms:
            return [(loss, ACTIVITY) for loss, _ in added]
        if not tf.executing_eagerly():
            dependence = depends_on_inputs(terms, x)
        else:
            if self._eager_dependence is None or len(self._eager_dependence) != len(terms):
                self._eager_dependence = traced_dependence(self._forward_terms, x)
            dependence = self._eager_dependence
        kinds = iter([BATCH_SUM if depends else INPUT_FREE for depends in dependence])
        return [(loss, ACTIVITY if from_activity else next(kinds)) for loss, from_activity in added]

    def _forward_terms(self, x: Any) -> list[tf.Tensor]:
        self.model(x, training=True)
        return [loss for loss, from_activity in compat.forward_losses(self.model) if not from_activity]

    def _compute_loss(self, x: Any, y: Any, y_pred: Any, sample_weight: Any) -> tf.Tensor:
        if self._compute_loss_has_training:
            return self.model.compute_loss(x, y, y_pred, sample_weight, training=True)
        return self.model.compute_loss(x, y, y_pred, sample_weight)

    def _zero_step(self) -> None:
        self._sums.zero()

    def _weigh_first(self) -> tf.Tensor:
        self._sums.weigh_first()
        return tf.constant(True)

    def _apply_step(self, processed: tf.Tensor, measure_noise: bool) -> tf.Tensor:
        """One optimizer update with the window's `processed` micro-steps' gradient sums over
        their global counts."""
        names = self.statistics
        local = tf.identity(self._sums.statistics)
        if measure_noise:
            local = self._with_noise_row(local, processed)
        totals = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, local)
        divisor = tf.constant(1.0) if self.reduction == "sum" else totals[names.divisor]
        divisors = {DIVISOR: divisor, SAMPLES: totals[names.samples], ONE: tf.constant(1.0)}
        scale = _loss_scale(self.model.optimizer)
        pairs = [(gradient if scale is None else gradient * tf.cast(scale, gradient.dtype), variable)
                 for gradient, variable in zip(self._sums.window_gradients(divisors, processed),
                                               self._variables)
                 if gradient is not None]
        if pairs:
            self.model.optimizer.apply_gradients(pairs)
        loss = (tf.math.divide_no_nan(totals[names.divisor_loss], divisor)
                + tf.math.divide_no_nan(totals[names.samples_loss], totals[names.samples])
                + totals[names.one_loss])
        self._loss_metrics.update(loss, totals[names.outputs], divisor,
                                  samples=local[names.samples], counted=local[names.output_count])
        return totals

    def _with_noise_row(self, local: tf.Tensor, processed: tf.Tensor) -> tf.Tensor:
        """`local` with this replica's row of the noise-scale statistics filled in.

        The row holds this replica's micro-step sums and samples and its window gradient's squared
        norm (over its own counts); `GradientNoiseScale` turns each replica's row into its estimates
        on the host, so the window runs only the norm's kernels here (a few scalar ops per update
        fewer on a dispatch-bound model).
        """
        names = self.statistics
        divisor = tf.constant(1.0) if self.reduction == "sum" else local[names.divisor]
        divisors = {DIVISOR: divisor, SAMPLES: local[names.samples], ONE: tf.constant(1.0)}
        half, window_divisor = self._sums.window_norm_parts(divisors, processed)
        sums = tf.gather(local, [names.micro_half_norms, names.micro_inverse_sizes, names.micro_steps, names.samples])
        row = tf.concat([sums, tf.stack([tf.cast(window_divisor, tf.float32), half])], axis=0)
        if names.replicas > 1:
            replica = tf.distribute.get_replica_context().replica_id_in_sync_group
            row = tf.reshape(tf.one_hot(replica, names.replicas)[:, None] * row[None, :], [-1])
        return local + tf.pad(row, [[names.noise.start, names.size - names.noise.stop]])


def _loss_scale(optimizer: keras.optimizers.Optimizer) -> tf.Tensor | None:
    """The factor `optimizer.scale_loss` multiplies by (dynamic for LossScaleOptimizer), or None."""
    if hasattr(optimizer, "dynamic_scale"):
        return optimizer.dynamic_scale
    return optimizer.loss_scale_factor
