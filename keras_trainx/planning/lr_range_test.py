"""`lr_range_test()`: the loss against an exponentially growing learning rate, at the effective batch.

Each update of the sweep is one accumulation window of `fit_accumulated` (`accum_steps`
micro-batches of `batch_size`), so the test measures the batch the model will train with, not the
micro-batch that fits in memory. Each update's loss is the window's big-batch loss, read from the
epoch logs of a `fit` that runs one window per epoch, never the running mean that Keras reports
after each batch (tensorflow/tensorflow#58098), which would lag behind the rate and bias every
suggestion towards larger rates.

The sweep trains a copy of the model's optimizer (same class and configuration, its state copied
from the model's optimizer when that one was built) whose learning rate is a schedule of the step:
the rate is exact at every update, whatever learning-rate variable or schedule the model's own
optimizer has, and that optimizer is never touched. Afterwards the model's weights, metrics,
optimizer and the attributes `fit` sets are restored bit for bit, also after an early stop or an
error.
"""

import dataclasses
import warnings
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_trainx import fit_accumulated
from keras_trainx.compat import optimizer_config_with_rate
from keras_trainx.extras import require
from keras_trainx.planning.arguments import array_sample_count, check_compiled_model, check_finite, is_array_data
from keras_trainx.planning.lr_rules import debiased_ema, suggest
from keras_trainx.planning.state import CaptureOnTrainBegin, fit_attributes, restore_fit_attributes
from keras_trainx.validation import check_float, check_int


@dataclasses.dataclass(frozen=True, repr=False)
class LRRangeTestResult:
    """What `lr_range_test` measured, and the rates it suggests.

    Attributes:
        learning_rates: the rate of each update run (float64, increasing).
        losses: each update's loss, the big-batch loss of its window before the update.
        smoothed_losses: `losses` smoothed with the bias-corrected moving average.
        suggestions: `{rule: learning rate}` for the rules of `keras_trainx.planning.RULES`
            (`"minimum/10"`); empty, with a warning and `stop_reason` saying why, when the sweep
            cannot support a suggestion: the first loss is not finite, the sweep diverged too
            early, the smoothed loss never fell, or it never turned up.
        stop_reason: why the sweep ended: all updates ran, or the smoothed loss diverged.
        effective_batch_size: samples per update (`batch_size * accum_steps`), or `None` when
            the data was a `tf.data.Dataset` (its batch size is the dataset's).
        accum_steps: micro-batches per update.
    """

    learning_rates: np.ndarray
    losses: np.ndarray
    smoothed_losses: np.ndarray
    suggestions: dict[str, float]
    stop_reason: str
    effective_batch_size: int | None
    accum_steps: int

    def __repr__(self) -> str:
        rates = ", ".join(f"{rule}={rate:.3g}" for rule, rate in self.suggestions.items()) or "none"
        return (f"LRRangeTestResult({len(self.losses)} updates from {self.learning_rates[0]:.3g} to "
                f"{self.learning_rates[-1]:.3g}, suggestions: {rates}; {self.stop_reason})")

    def plot(self, ax: Any = None) -> Any:
        """Plots the raw and smoothed loss against the learning rate (log axis), with suggestions.

        Needs matplotlib (`pip install 'keras_trainx[plot]'`).

        Args:
            ax: a matplotlib `Axes` to draw into; a new figure is made when `None`.

        Returns:
            The matplotlib `Figure`.
        """
        plt = require("matplotlib.pyplot", "LRRangeTestResult.plot")
        if ax is None:
            _, ax = plt.subplots(figsize=(6, 3.5))
        elif not isinstance(ax, require("matplotlib.axes", "LRRangeTestResult.plot").Axes):
            raise TypeError(f"`ax` must be a matplotlib Axes or None; received ax={ax!r} of type "
                            f"{type(ax).__name__}.")
        ax.plot(self.learning_rates, self.losses, color="0.75", linewidth=1, label="loss")
        ax.plot(self.learning_rates, self.smoothed_losses, color="C0", label="smoothed loss")
        for index, (rule, rate) in enumerate(self.suggestions.items()):
            ax.axvline(rate, color=f"C{index + 1}", linestyle="--", label=f"{rule}: {rate:.3g}")
        finite = np.concatenate([self.losses, self.smoothed_losses])
        finite = finite[np.isfinite(finite)]
        if finite.size:  # from the lowest loss to a little above the first: the divergence leaves the plot
            low, high = finite.min(), max(self.losses[0], self.smoothed_losses[0])
            ax.set_ylim(low - 0.05 * (high - low), high + 0.25 * (high - low) + 1e-12)
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("loss per update")
        batch = f"effective batch {self.effective_batch_size}" if self.effective_batch_size else (
            f"accum_steps={self.accum_steps}")
        ax.set_title(f"LR range test, {batch}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
        return ax.figure


def lr_range_test(
    model: keras.Model,
    x: Any = None,
    y: Any = None,
    *,
    batch_size: int | None = None,
    accum_steps: int = 1,
    min_learning_rate: float = 1e-7,
    max_learning_rate: float = 10.0,
    num_updates: int = 100,
    smoothing: float = 0.98,
    divergence_factor: float = 4.0,
) -> LRRangeTestResult:
    """Runs an LR range test at the effective batch `batch_size * accum_steps` and restores the model.

    Update `i` (from 0) trains with `min_learning_rate * (max_learning_rate /
    min_learning_rate) ** (i / (num_updates - 1))` on one window of `fit_accumulated`. Each
    update's big-batch loss is recorded and smoothed with a bias-corrected moving average; the
    sweep stops early once the smoothed loss exceeds `divergence_factor` times its lowest value
    (or a loss is not finite). Rules then suggest rates (`keras_trainx.planning.RULES`), unless
    the curve cannot support one (a warning says why, and what to change).

    The model trains with a copy of its optimizer (same class and configuration, state copied),
    whose rate the sweep sets at every update; the model's own optimizer is left untouched, and
    the model's weights, non-trainable and seed variables, metric totals and the attributes
    `Model.fit` sets are restored bit for bit afterwards, also when the sweep stops early or
    fails. A model that was not built yet is built as `fit` builds it, and keeps its initial
    weights.

    Args:
        model: a compiled `keras.Model`, as `fit_accumulated` takes it.
        x, y: numpy arrays or tensors (nested structures as `Model.fit` takes them), shuffled and
            repeated as needed; or a `tf.data.Dataset` of micro-batches as `x` (repeated as needed).
        batch_size: the micro-batch size for arrays; `None` for a dataset.
        accum_steps: micro-batches per update (the effective batch is `batch_size * accum_steps`).
        min_learning_rate: the rate of the first update, > 0.
        max_learning_rate: the rate of the last update, > `min_learning_rate`.
        num_updates: updates in the whole sweep (it may stop earlier), >= 3.
        smoothing: the weight of the past in the moving average, in `[0, 1)` (0: no smoothing).
        divergence_factor: stop once the smoothed loss exceeds this multiple of its lowest
            value, > 1.

    Returns:
        An `LRRangeTestResult`: rates, raw and smoothed losses, suggestions, `plot()`.

    Example:

    >>> import numpy as np, keras, keras_trainx
    >>> keras.utils.set_random_seed(0)
    >>> x = np.random.normal(size=(256, 4)).astype("float32")
    >>> y = x @ np.array([[1.0], [2.0], [-1.0], [0.5]], "float32")
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    >>> model.compile(optimizer="sgd", loss="mse")
    >>> before = model.get_weights()
    >>> result = keras_trainx.planning.lr_range_test(
    ...     model, x, y, batch_size=32, accum_steps=8, min_learning_rate=1e-4,
    ...     max_learning_rate=10.0, num_updates=40)
    >>> list(result.suggestions)
    ['minimum/10']
    >>> all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    True
    """
    dataset, effective_batch_size = _sweep_data(x, y, batch_size, accum_steps)
    min_learning_rate = check_float("min_learning_rate", min_learning_rate, minimum=0.0, exclusive_minimum=True)
    max_learning_rate = check_float(
        "max_learning_rate", max_learning_rate, minimum=min_learning_rate, exclusive_minimum=True,
        hint="The sweep grows the rate from min_learning_rate to max_learning_rate.")
    num_updates = check_int("num_updates", num_updates, minimum=3,
                            hint="The suggestion rules need at least 3 updates.")
    smoothing = check_float("smoothing", smoothing, minimum=0.0, maximum=1.0, exclusive_maximum=True,
                            hint="It is the weight of the past in the moving average; 0 disables smoothing.")
    divergence_factor = check_float(
        "divergence_factor", divergence_factor, minimum=1.0, exclusive_minimum=True,
        hint="The sweep stops once the smoothed loss exceeds this multiple of its lowest value.")
    check_compiled_model(model, "lr_range_test")

    user_optimizer = model.optimizer
    sweep_optimizer = _copy_of(user_optimizer, model, min_learning_rate, max_learning_rate, num_updates)
    capture = CaptureOnTrainBegin(user_optimizer)
    monitor = _SweepMonitor(user_optimizer, sweep_optimizer, min_learning_rate, max_learning_rate,
                            num_updates, smoothing, divergence_factor)
    attributes = fit_attributes(model)
    try:
        model.optimizer = sweep_optimizer
        fit_accumulated(model, dataset, accum_steps=accum_steps, epochs=num_updates,
                        steps_per_epoch=accum_steps, shuffle=False, verbose=0, callbacks=[capture, monitor])
    finally:
        model.optimizer = user_optimizer
        capture.restore()
        restore_fit_attributes(model, attributes)

    losses = np.array(monitor.losses)
    rates = _sweep_rates(min_learning_rate, max_learning_rate, num_updates)[:len(losses)]
    smoothed = debiased_ema(losses, smoothing)
    skip = num_updates // 10
    suggestions, unsupported = suggest(rates, losses, smoothed, skip=skip)
    stop_reason = monitor.stop_reason or f"ran all {num_updates} updates"
    why_none = _why_no_suggestion(losses, smoothed, bool(monitor.stop_reason), unsupported, min_learning_rate,
                                  max_learning_rate)
    if why_none:
        suggestions = {}
        stop_reason += f"; {why_none}"
        warnings.warn(f"lr_range_test {stop_reason}.", stacklevel=2)
    return LRRangeTestResult(rates, losses, smoothed, suggestions, stop_reason, effective_batch_size,
                             accum_steps)


def _why_no_suggestion(losses: np.ndarray, smoothed: np.ndarray, stopped: bool, unsupported: str, first: float,
                       last: float) -> str:
    """Why the sweep supports no suggestion, with what to change, or `""` when it supports one.

    `unsupported` is why the rules suggested nothing (`lr_rules.suggest`). The first loss is
    computed before any update, so when it is not finite no rate is at fault; too few usable
    updates mean the sweep diverged at once; a smoothed loss that never fell has a model or data
    that this loss does not respond to, or a sweep that began too high; and a complete sweep whose
    smoothed minimum is its last update never reached the rates where training diverges.
    """
    if not np.isfinite(losses[0]):
        return (f"the loss of update 1, computed before any update, is {losses[0]}: the data or the model's "
                "initial weights give a non-finite loss, which no learning rate changes; check them for NaN "
                "and inf")
    if unsupported.startswith("only"):
        return f"too few updates before divergence to suggest a rate: lower min_learning_rate={first:g}"
    if unsupported:
        return (f"the smoothed loss did not fall ({unsupported}), so no rate is suggested: either this loss does "
                "not fall at any rate (targets the inputs do not predict, a loss that is 0 already) or every rate "
                f"of the sweep is too high (lower min_learning_rate={first:g})")
    if not stopped and int(np.argmin(smoothed)) == len(smoothed) - 1:
        return (f"the smoothed loss still fell at the last update (rate {last:g}): the sweep never reached the "
                f"rates where training diverges, so no rate is suggested; raise max_learning_rate={last:g}")
    return ""


def _sweep_rates(first: float, last: float, num_updates: int) -> np.ndarray:
    """The rate of each update: geometric from `first` to `last`."""
    return first * (last / first) ** (np.arange(num_updates) / (num_updates - 1))


class _SweepRate(keras.optimizers.schedules.LearningRateSchedule):
    """The sweep's rate as a function of the optimizer step: `_sweep_rates` from `start_step` on.

    Computed in float64 and cast once, so the applied rate is the float32 rounding of the
    reported one.
    """

    def __init__(self, first: float, last: float, num_updates: int, start_step: int) -> None:
        self.first = first
        self.last = last
        self.num_updates = num_updates
        self.start_step = start_step

    def __call__(self, step: Any) -> tf.Tensor:
        update = tf.cast(step, tf.float64) - float(self.start_step)
        exponent = update / float(self.num_updates - 1)
        rate = self.first * tf.pow(tf.constant(self.last / self.first, tf.float64), exponent)
        return tf.cast(rate, tf.float32)

    def get_config(self) -> dict:
        return {"first": self.first, "last": self.last, "num_updates": self.num_updates,
                "start_step": self.start_step}


class _SweepMonitor(keras.callbacks.Callback):
    """Starts the sweep on the copied optimizer, records each update's loss, stops on divergence."""

    def __init__(self, user_optimizer: keras.optimizers.Optimizer,
                 sweep_optimizer: keras.optimizers.Optimizer, first: float, last: float,
                 num_updates: int, smoothing: float, divergence_factor: float) -> None:
        super().__init__()
        self.user_optimizer = user_optimizer
        self.sweep_optimizer = sweep_optimizer
        self.first, self.last, self.num_updates = first, last, num_updates
        self.smoothing = smoothing
        self.divergence_factor = divergence_factor
        self.losses: list[float] = []
        self.stop_reason = ""
        self._average = 0.0
        self._best = np.inf

    def on_train_begin(self, logs: dict | None = None) -> None:
        # Model.fit has built the copy by now (from model.trainable_variables).
        if self.user_optimizer.built:
            _copy_optimizer_state(self.user_optimizer, self.sweep_optimizer)
        self.sweep_optimizer.learning_rate = _SweepRate(
            self.first, self.last, self.num_updates, int(self.sweep_optimizer.iterations.numpy()))

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        loss = float((logs or {})["loss"])
        self.losses.append(loss)
        update = len(self.losses)
        self._average = self.smoothing * self._average + (1.0 - self.smoothing) * loss
        smoothed = self._average / (1.0 - self.smoothing**update)
        self._best = min(self._best, smoothed)
        if not np.isfinite(loss):
            self.stop_reason = f"stopped at update {update}: the loss is {loss}"
        elif smoothed > self.divergence_factor * self._best:
            self.stop_reason = (f"stopped at update {update}: the smoothed loss {smoothed:.4g} exceeds "
                                f"{self.divergence_factor:g} x its lowest value {self._best:.4g}")
        if self.stop_reason:
            self.model.stop_training = True


def _sweep_data(x: Any, y: Any, batch_size: int | None, accum_steps: int) -> tuple[tf.data.Dataset, int | None]:
    """An endless dataset of micro-batches, and the effective batch size (None for a dataset)."""
    accum_steps = check_int("accum_steps", accum_steps, minimum=1,
                            hint="It counts micro-batches per update; 1 means no accumulation.")
    if isinstance(x, tf.data.Dataset):
        if y is not None:
            raise ValueError("`y` must be None when `x` is a tf.data.Dataset (the dataset yields the "
                             f"targets); received y of type {type(y).__name__}.")
        if batch_size is not None:
            raise ValueError("`batch_size` must be None when `x` is a tf.data.Dataset (the dataset "
                             f"yields micro-batches); received batch_size={batch_size!r}.")
        _check_batched(x)
        micro_batches = int(x.cardinality())
        if 0 <= micro_batches < accum_steps:
            raise ValueError(
                f"`accum_steps` must be at most the {micro_batches} micro-batches of the dataset `x` (an update "
                f"holds accum_steps of them; more would repeat micro-batches within one update); received "
                f"accum_steps={accum_steps}.")
        return x.repeat(), None
    if not is_array_data(x):
        raise TypeError(
            "`x` must be numpy arrays or tensors (or a nested structure of them) or a tf.data.Dataset "
            f"of micro-batches; received x of type {type(x).__name__}. Convert a PyDataset or "
            "generator to a tf.data.Dataset (tf.data.Dataset.from_generator).")
    if batch_size is None:
        raise TypeError("`batch_size` must be an int for array data (the micro-batch size); received "
                        "batch_size=None.")
    batch_size = check_int("batch_size", batch_size, minimum=1, hint="It is the micro-batch size.")
    samples = array_sample_count(x, y)
    if batch_size * accum_steps > samples:
        raise ValueError(
            f"`batch_size` x `accum_steps` (the effective batch, {batch_size} x {accum_steps} = "
            f"{batch_size * accum_steps}) must be at most the {samples} samples of `x`: an update holds one "
            "effective batch, which would repeat samples. Pass more data, or a smaller batch_size or accum_steps.")
    check_finite("x", x)
    check_finite("y", y)
    arrays = (x,) if y is None else (x, y)
    dataset = (tf.data.Dataset.from_tensor_slices(arrays).shuffle(samples).repeat()
               .batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE))
    return dataset, batch_size * accum_steps


def _check_batched(dataset: tf.data.Dataset) -> None:
    """Raises when `dataset` yields single samples, which a batched dataset cannot: a scalar
    element, or elements whose leading (batch) dimensions differ."""
    shapes = [spec.shape for spec in tf.nest.flatten(dataset.element_spec) if hasattr(spec, "shape")]
    leading = {shape[0] for shape in shapes if shape.rank}
    if any(shape.rank == 0 for shape in shapes) or len(leading) > 1 and None not in leading:
        raise ValueError(
            "`x` must be a tf.data.Dataset of micro-batches; its elements are single samples (shapes "
            f"{', '.join(str(tuple(shape)) for shape in shapes)} share no leading batch dimension). Batch it: "
            "x.batch(micro_batch_size).")


def _copy_of(optimizer: keras.optimizers.Optimizer, model: keras.Model, first: float, last: float,
             num_updates: int) -> keras.optimizers.Optimizer:
    """A new optimizer of the same class and configuration, under the model's strategy, at the sweep's
    rate: a variable or a schedule as the model's optimizer has one (so their variables match).
    The model's own rate or schedule is left out of the configuration, so a schedule that is not
    registered or has no `get_config` does not matter.
    """
    try:
        config = optimizer_config_with_rate(optimizer, first, _SweepRate(first, last, num_updates, 0))
        with model.distribute_strategy.scope():
            return type(optimizer).from_config(config)
    except Exception as error:
        raise TypeError(
            f"lr_range_test trains a copy of the model's optimizer, made with "
            f"{type(optimizer).__name__}.from_config(optimizer.get_config()) (its learning rate left out), "
            f"which failed: {error}. Give the optimizer class a get_config() that mirrors its __init__.") from error


def _copy_optimizer_state(source: keras.optimizers.Optimizer, target: keras.optimizers.Optimizer) -> None:
    """Assigns every variable of `source` to its counterpart in `target` (same class and build)."""
    source_variables, target_variables = source.variables, target.variables
    source_layout = [(v.name, tuple(v.shape)) for v in source_variables]
    target_layout = [(v.name, tuple(v.shape)) for v in target_variables]
    if source_layout != target_layout:
        raise ValueError(
            "The model's optimizer was built for other variables than the model's trainable "
            f"variables now ({len(source_layout)} optimizer variables, a fresh build has "
            f"{len(target_layout)}), so its state cannot be copied into the sweep. Recompile the "
            "model (model.compile) after changing which layers are trainable.")
    for source_variable, target_variable in zip(source_variables, target_variables):
        target_variable.assign(source_variable)
