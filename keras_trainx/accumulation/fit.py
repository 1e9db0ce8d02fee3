"""`fit_accumulated()`: `Model.fit` with exact gradient accumulation.

Keras' own `Model.fit` drives the run: data adapters and their workers, callbacks, validation, the
progress bar, `keras.config.set_max_epochs`, metric resets and `History` are Keras'. This module only
supplies the function `Model.fit` calls once per execution (`model.train_function`), which runs whole
accumulation windows, and restores the model's own functions afterwards, also when the run fails.
"""

import json
import math
import numbers
import os
from typing import Any

import keras
import tensorflow as tf

from keras_trainx import compat
from keras_trainx.accumulation.interrupts import keyboard_interrupts_restored
from keras_trainx.accumulation.window import WindowStep
from keras_trainx.accumulation.loss_normalization import loss_reduction
from keras_trainx.data.epochs import epoch_callbacks
from keras_trainx.distribute.sharding import sharded_input
from keras_trainx.accumulation.noise_scale import GradientNoiseScale
from keras_trainx.schedules.accumulation import AccumulationSchedule, as_accumulation_schedule
from keras_trainx.validation import check_choice, check_float, check_int

REMAINDERS = ("apply", "drop")


def fit_accumulated(
    model: keras.Model,
    x: Any = None,
    y: Any = None,
    *,
    accum_steps: int | dict[int, int] | AccumulationSchedule,
    remainder: str = "apply",
    **fit_kwargs: Any,
) -> keras.callbacks.History:
    """Trains `model` like `model.fit`, with one optimizer update per `accum_steps` micro-batches.

    Every update equals one `Model.fit` step on the concatenation of its window's micro-batches: the
    per-sample (weighted) losses are summed over the window and divided by the count the big batch
    would divide by, so unequal micro-batches, sample weights, class weights, masked losses and every
    Keras loss reduction give exactly the big-batch gradient. Losses that layers add count as the
    big batch counts them: weight penalties once per update, `activity_regularizer` losses as means
    over the window's samples, `add_loss` terms computed in `call` as sums over every micro-batch
    (Keras' `add_loss(ops.sum(...))`). The optimizer step counter, learning-rate schedules, weight
    decay, gradient clipping and EMA act once per update. The reported `loss` is each window's
    big-batch loss; other metrics update on every micro-batch, which gives the big batch's values
    for Keras' stateful metrics. Embedding gradients are summed densely, as standard Adam
    (Keras' JAX backend) computes them.

    Keras' own `Model.fit` runs the loop (the model class's `fit`, so a subclass that overrides it,
    as KerasHub tasks do to attach preprocessing, keeps its behaviour): every `Model.fit` argument
    is accepted, callbacks, validation and `History` are `fit`'s. One compiled call runs a whole
    window: micro-steps accumulate into per-replica variables with no cross-replica traffic, then
    one `apply_gradients` all-reduces once (under `tf.distribute`, build and compile the model under
    `strategy.scope()`). An `AugmentedSequence` given as `x` is told each epoch's number, and orders
    its batches itself (Keras' batch shuffle, from Python's global `random`, is not added), so a
    resumed run sees the same batches; under a multi-worker strategy with one replica per worker,
    each worker loads and augments only its share of every global batch of such a sequence (or of
    its `to_tf_dataset()`), and the replicas see one process's batches
    (`keras_trainx.distribute.shard_sequence`). A `keras.callbacks.BackupAndRestore(save_freq=n)` run that
    is interrupted inside an epoch resumes after the last saved window instead of repeating the
    epoch's first windows, as `Model.fit` does. A `keras_trainx.planning.GradientNoiseScale`
    callback makes every update also estimate the gradient noise scale.

    Args:
        model: a compiled `keras.Model`. Its optimizer must not use Keras'
            `gradient_accumulation_steps`. A model that overrides `train_step` trains with its own
            step when `accum_steps=1`; for `accum_steps > 1` override `compute_loss` instead: it is
            taken to return a mean over the micro-batch's samples, unless it reports the count it
            divides by with `keras_trainx.set_loss_divisor`.
        x, y: training data, as for `Model.fit`: numpy arrays or tensors, a `tf.data.Dataset`, a
            `keras.utils.PyDataset` or a Python generator (the last three yield micro-batches). An
            input that runs dry ends its epoch there (a shorter last window, as `remainder` says).
        accum_steps: micro-batches per update, an int >= 1; or a dict `{epoch: accum_steps}` (or a
            `keras_trainx.schedules.AccumulationSchedule`) that changes it from those epochs on
            (epochs before the first key use 1). The effective batch size is
            `batch_size * accum_steps`.
        remainder: what to do with a window cut short by the end of an epoch: `"apply"` (default)
            applies it as its own update, normalized by its own samples; `"drop"` discards it (for
            inputs of unknown length its micro-batches have then already counted in the metrics
            other than `loss`).
        **fit_kwargs: any argument of `Model.fit`. `batch_size` and `steps_per_epoch` count
            micro-batches; `compile(steps_per_execution=k)` runs `k` updates per compiled call.
            Refused where `Model.fit` accepts them with a wrong result: `x`/`y` with 0 samples, a
            `validation_split` outside [0, 1), `class_weight` keys that no label can match.

    Raises:
        KeyboardInterrupt: also when one is raised inside a generator or `PyDataset` (`Model.fit`
            raises `tf.errors.UnknownError` then).

    Returns:
        The `keras.callbacks.History` of `Model.fit`.

    Example:

    >>> import numpy as np, keras, keras_trainx
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    >>> model.compile(optimizer="sgd", loss="mse")
    >>> x, y = np.ones((27, 4), "float32"), np.ones((27, 1), "float32")
    >>> history = keras_trainx.fit_accumulated(
    ...     model, x, y, batch_size=8, accum_steps=4, epochs=2, verbose=0)
    >>> int(model.optimizer.iterations)  # one update per epoch: 8 + 8 + 8 + 3 samples
    2
    """
    schedule = as_accumulation_schedule(accum_steps)
    check_choice("remainder", remainder, REMAINDERS,
                 hint="'apply' applies a window cut short at the end of an epoch as its own "
                      "update, 'drop' discards it.")
    _check_model(model, max(schedule.factors))
    _check_fit_arguments(x, y, fit_kwargs)
    if type(model).train_step is not keras.Model.train_step:
        with keyboard_interrupts_restored():
            return model.fit(x, y, **fit_kwargs)
    loss_reduction(model)

    steps_per_execution = model.steps_per_execution
    saved = (model.train_function, model.test_function, steps_per_execution)
    callbacks = fit_kwargs.get("callbacks")
    listed = list(callbacks.callbacks if isinstance(callbacks, keras.callbacks.CallbackList) else callbacks or [])
    position = _WindowPosition(schedule, _resume_metadata_path(listed))
    sequence_callbacks = epoch_callbacks(x)
    added = [position, *sequence_callbacks]
    fit_kwargs["callbacks"] = _with_callbacks(callbacks, added)
    if sequence_callbacks and getattr(x, "shuffle", False):
        fit_kwargs["shuffle"] = False  # the sequence orders its batches by (seed, epoch) itself
    sharded = sharded_input(x, model.distribute_strategy, fit_kwargs.get("class_weight"))
    if sharded is not x:
        x, fit_kwargs["shuffle"] = sharded, False  # each worker builds its share of the sequence's batches
    noise_scales = [c for c in listed if isinstance(c, GradientNoiseScale)]
    if noise_scales and max(schedule.factors) < 2:
        raise ValueError(
            "GradientNoiseScale compares micro-batch and window gradients, so it needs "
            f"accum_steps >= 2; received accum_steps={accum_steps!r}."
        )
    for noise_scale in noise_scales:
        noise_scale.attach(True)
    try:
        with compat.build_from_local_batch(model), keyboard_interrupts_restored():
            # Keras builds the model (above), then calls `make_train_function()`, which keeps the
            # function set here, and calls it once per execution of `steps_per_execution` batches.
            model.train_function = _TrainFunction(model, remainder == "apply", position, noise_scales)
            model.test_function = None  # validation runs with this execution length too
            model.steps_per_execution = schedule.micro_batches_per_call * steps_per_execution
            return model.fit(x, y, **fit_kwargs)
    finally:
        model.train_function, model.test_function, model.steps_per_execution = saved
        for noise_scale in noise_scales:
            noise_scale.attach(False)
        if isinstance(fit_kwargs["callbacks"], keras.callbacks.CallbackList):
            for callback in added:
                fit_kwargs["callbacks"].callbacks.remove(callback)


def _check_fit_arguments(x: Any, y: Any, fit_kwargs: dict[str, Any]) -> None:
    """Refuses what `fit` would fail on obscurely (Keras takes `batch_size=0` for its default), and what
    it would accept silently with a wrong result: no samples, a `validation_split` outside [0, 1),
    `class_weight` keys that no label can match."""
    if x is None:
        raise ValueError(
            "x is None: fit_accumulated needs training data, as model.fit does. Pass arrays "
            "(x, y), a tf.data.Dataset, a keras.utils.PyDataset or a generator."
        )
    _check_not_empty(x, y)
    for name, minimum in (("batch_size", 1), ("epochs", 0), ("initial_epoch", 0), ("steps_per_epoch", 1),
                          ("validation_batch_size", 1), ("validation_steps", 1)):
        if fit_kwargs.get(name) is not None:
            check_int(name, fit_kwargs[name], minimum=minimum)
    if fit_kwargs.get("validation_split") is not None:
        check_float("validation_split", fit_kwargs["validation_split"], minimum=0.0, maximum=1.0,
                    exclusive_maximum=True,
                    hint="It is the fraction of the samples (the last ones) held out for validation, e.g. 0.2; "
                         "model.fit would split elsewhere without a word (1.5 holds out the last half, a "
                         "negative value nothing).")
    if fit_kwargs.get("class_weight") is not None:
        _check_class_weight(fit_kwargs["class_weight"])
    callbacks = fit_kwargs.get("callbacks")
    if callbacks is None or isinstance(callbacks, keras.callbacks.CallbackList):
        return
    if not isinstance(callbacks, (list, tuple)):
        raise TypeError(
            "`callbacks` must be a list of keras.callbacks.Callback objects; received "
            f"callbacks={callbacks!r} of type {type(callbacks).__name__}."
        )
    for index, callback in enumerate(callbacks):
        if not isinstance(callback, keras.callbacks.Callback):
            raise TypeError(
                f"`callbacks[{index}]` must be a keras.callbacks.Callback; received {callback!r} of "
                f"type {type(callback).__name__}. Subclass keras.callbacks.Callback, or use "
                "keras.callbacks.LambdaCallback for plain functions."
            )


def _check_not_empty(x: Any, y: Any) -> None:
    """Refuses arrays or a `tf.data.Dataset` without a sample: `fit` would return an empty History."""
    if isinstance(x, tf.data.Dataset) and int(x.cardinality()) == 0:
        raise ValueError(
            "x is a tf.data.Dataset without a single batch: there is nothing to train on (model.fit would "
            "return an empty History without training). Pass a dataset that yields batches."
        )
    for name, data in (("x", x), ("y", y)):
        for array in keras.tree.flatten(data) if not isinstance(data, tf.data.Dataset) else []:
            shape = getattr(array, "shape", None)
            if shape is not None and len(shape) >= 1 and shape[0] == 0:
                raise ValueError(
                    f"{name} holds 0 samples (an array of shape {tuple(shape)}): there is nothing to train on "
                    "(model.fit would return an empty History without training). Pass at least one sample."
                )


def _check_class_weight(class_weight: Any) -> None:
    """Refuses keys that no label can match (Keras ignores them silently) and weights that are no weight.

    A class index that no label of `y` holds is accepted, as `Model.fit` accepts it: weights are
    often computed over a whole dataset, of which `y` may be a part; the key then weighs nothing.
    """
    if not isinstance(class_weight, dict):
        raise TypeError(
            "`class_weight` must be a dict of class index -> weight; received "
            f"class_weight={class_weight!r} of type {type(class_weight).__name__}."
        )
    for key, weight in class_weight.items():
        index = (isinstance(key, numbers.Real) and not isinstance(key, bool) and math.isfinite(key)
                 and float(key).is_integer())
        if not index:
            raise ValueError(
                f"`class_weight` keys must be class indices (ints); received the key {key!r} of type "
                f"{type(key).__name__}, which no label matches: model.fit would ignore it. Key the weights by "
                "the labels' integer values (for one-hot labels, the column)."
            )
        check_float(f"class_weight[{key!r}]", weight, minimum=0.0)


def _check_model(model: keras.Model, accum_steps: int) -> None:
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"model must be a keras.Model; received {type(model).__name__}. Build a Keras model "
            "and compile it before fit_accumulated."
        )
    if not getattr(model, "compiled", False) or model.optimizer is None:
        raise ValueError(
            "model must be compiled with an optimizer and a loss before fit_accumulated: call "
            "model.compile(optimizer=..., loss=...) first."
        )
    if getattr(model.optimizer, "gradient_accumulation_steps", None):
        raise ValueError(
            "model's optimizer has gradient_accumulation_steps="
            f"{model.optimizer.gradient_accumulation_steps}, which would accumulate a second time "
            "(and inexactly). Compile with an optimizer without gradient_accumulation_steps and "
            "pass accum_steps to fit_accumulated instead."
        )
    if accum_steps > 1 and type(model).train_step is not keras.Model.train_step:
        raise ValueError(
            f"{type(model).__name__} overrides train_step, which fit_accumulated cannot split into "
            f"micro-steps (accum_steps={accum_steps}). Override compute_loss instead (the "
            "accumulation window calls it for every micro-batch), or pass accum_steps=1 to train "
            "with your own train_step."
        )


def _with_callbacks(callbacks: Any, added: list) -> Any:
    """`callbacks` (None, a list or a `CallbackList`) with the `added` callbacks first."""
    if isinstance(callbacks, keras.callbacks.CallbackList):
        callbacks.callbacks[:0] = added
        for callback in added:
            callback.set_model(callbacks.model)
        return callbacks
    return [*added, *(callbacks or [])]


def _resume_metadata_path(callbacks: list) -> str | None:
    """The training-state file of a `BackupAndRestore` that saves every `n` batches, or None."""
    for callback in callbacks:
        if isinstance(callback, keras.callbacks.BackupAndRestore) and isinstance(callback.save_freq, int):
            return compat.backup_metadata_path(callback)
    return None


class _WindowPosition(keras.callbacks.Callback):
    """Tells the train function where in the epoch its execution begins, and the epoch's window.

    With `steps_per_epoch`, `Model.fit` keeps one data iterator across epochs, so an execution must
    stop at the epoch's last micro-batch instead of running until the data ends. After a
    `BackupAndRestore(save_freq=n)` restored a run saved inside an epoch, `Model.fit` starts that
    epoch again from its first batch: the executions up to the saved batch are skipped (their
    micro-batches read, not trained on), so the run continues from the saved weights exactly.
    """

    def __init__(self, schedule: AccumulationSchedule, resume_metadata_path: str | None) -> None:
        super().__init__()
        self.schedule = schedule
        self.accum_steps = schedule.at(0)
        self.begin_step = 0
        self.skip_through = -1
        self._resume_metadata_path = resume_metadata_path
        self._first_epoch = True

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.accum_steps = self.schedule.at(epoch)
        self.skip_through = -1
        if self._first_epoch and self._resume_metadata_path and os.path.exists(self._resume_metadata_path):
            with open(self._resume_metadata_path) as file:
                saved = json.load(file)
            if saved.get("epoch") == epoch:
                self.skip_through = int(saved.get("batch", -1))
        self._first_epoch = False

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        self.begin_step = batch

    def micro_batches_left(self, wanted: int) -> int:
        """How many of `wanted` micro-batches the epoch still holds (all, if its length is unknown)."""
        steps = (self.params or {}).get("steps")
        if not steps:
            return wanted
        return max(0, min(wanted, steps - self.begin_step))


class _TrainFunction:
    """`model.train_function` for `Model.fit`: whole accumulation windows a call."""

    def __init__(self, model: keras.Model, apply_partial: bool, position: _WindowPosition,
                 noise_scales: list[GradientNoiseScale]) -> None:
        self.model = model
        self.apply_partial = apply_partial
        self.position = position
        self.noise_scales = noise_scales
        self._window: WindowStep | None = None

    def __call__(self, iterator: Any) -> dict:
        if self._window is None:  # the model is built by now: Keras builds it before the first call
            self._window = WindowStep.for_model(self.model, self.apply_partial)
        window = self._window
        position = self.position
        accum_steps = position.accum_steps
        per_call = self.model.steps_per_execution
        left = position.micro_batches_left(per_call)
        if position.begin_step <= position.skip_through:  # trained before the interruption
            if window.skip(iterator, left) == 0:
                raise StopIteration
            return self.model.get_metrics_result()
        consumed = 0
        logs: dict = {}
        while left > 0:
            length = min(accum_steps, left)
            if length < accum_steps and not self.apply_partial:
                processed = window.skip(iterator, length)
                logs = self.model.get_metrics_result()
            else:
                measure = any(noise_scale.measures_next() for noise_scale in self.noise_scales)
                processed, logs, statistics = window(iterator, length, measure)
                if processed:
                    for noise_scale in self.noise_scales:
                        noise_scale.update(statistics, window.statistics)
            consumed += processed
            left -= length
            if processed < length:
                break
        if consumed == 0:
            raise StopIteration
        return logs
