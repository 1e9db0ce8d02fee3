"""`fit_accumulated()`: `Model.fit` with exact gradient accumulation."""

import numbers

from keras import ops
from keras.src import callbacks as callbacks_module
from keras.src import optimizers as optimizers_module
from keras.src import tree
from keras.src.backend.tensorflow.trainer import TFEpochIterator
from keras.src.trainers.data_adapters import array_slicing, data_adapter_utils

from keras_trainx.accumulation import WindowStep

REMAINDERS = ("apply", "drop")


def fit_accumulated(
    model,
    x=None,
    y=None,
    *,
    accum_steps,
    remainder="apply",
    batch_size=None,
    epochs=1,
    verbose="auto",
    callbacks=None,
    validation_split=0.0,
    validation_data=None,
    shuffle=True,
    class_weight=None,
    sample_weight=None,
    initial_epoch=0,
    steps_per_epoch=None,
    validation_steps=None,
    validation_batch_size=None,
    validation_freq=1,
):
    """Trains `model` like `model.fit`, with one optimizer update per `accum_steps` micro-batches.

    Every update equals one `Model.fit` step on the concatenation of its window's micro-batches: the
    per-sample (weighted) losses are summed over the window and divided by the number of samples the
    big batch would divide by, so unequal micro-batches, sample weights, class weights and masked
    losses give exactly the big-batch gradient. Regularization losses count once per update; the
    optimizer step counter, learning-rate schedules, weight decay, gradient clipping and EMA act once
    per update. Metrics update on every micro-batch and are reported, reset and validated as in `fit`.

    One compiled call runs a whole window: micro-steps accumulate into per-replica variables with
    no cross-replica traffic, then one `apply_gradients` all-reduces once (under `tf.distribute`,
    build and compile the model under `strategy.scope()`).

    Args:
        model: a compiled `keras.Model`. Its optimizer must not use Keras'
            `gradient_accumulation_steps`.
        x, y: training data, as for `Model.fit`: numpy arrays or tensors, a `tf.data.Dataset`, a
            `keras.utils.PyDataset` or a Python generator (the last three yield micro-batches).
        accum_steps: positive int, micro-batches per update. The effective batch size is
            `batch_size * accum_steps`.
        remainder: what to do with a window cut short by the end of an epoch: `"apply"` (default)
            applies it as its own update, normalized by its own samples; `"drop"` discards it (for
            inputs of unknown length, its micro-batches have then already counted in the metrics).
        batch_size: the micro-batch size (array inputs only).
        epochs, verbose, callbacks, validation_split, validation_data, shuffle, class_weight,
        sample_weight, initial_epoch, validation_steps, validation_batch_size, validation_freq:
            as in `Model.fit`.
        steps_per_epoch: micro-batches per epoch, as in `Model.fit`.

    Returns:
        A `keras.callbacks.History`. Besides the metrics (`loss`, `val_loss`, ...) it records the
        optimizer's `learning_rate` at the end of each epoch.

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
    _check_arguments(model, accum_steps, remainder, steps_per_epoch)
    if validation_split and validation_data is None:
        (x, y, sample_weight), validation_data = array_slicing.train_validation_split(
            (x, y, sample_weight), validation_split=validation_split
        )
    epoch_iterator = TFEpochIterator(
        x=x,
        y=y,
        sample_weight=sample_weight,
        batch_size=batch_size,
        steps_per_epoch=steps_per_epoch,
        shuffle=shuffle,
        class_weight=class_weight,
        distribute_strategy=model.distribute_strategy,
        steps_per_execution=accum_steps,
    )
    _build(model, epoch_iterator)
    epoch_iterator.reset()
    window = WindowStep.for_model(model, apply_partial=remainder == "apply")

    if not isinstance(callbacks, callbacks_module.CallbackList):
        callbacks = callbacks_module.CallbackList(
            callbacks,
            add_history=True,
            add_progbar=verbose != 0,
            verbose=verbose,
            epochs=epochs,
            steps=epoch_iterator.num_batches,
            model=model,
        )
    validation = _Validation(model, validation_data, validation_batch_size or batch_size,
                             validation_steps, validation_freq, callbacks)
    model.stop_training = False
    callbacks.on_train_begin()
    logs = {}
    training_logs = None
    for epoch in range(model._initial_epoch or initial_epoch, epochs):
        model.reset_metrics()
        callbacks.on_epoch_begin(epoch)
        with epoch_iterator.catch_stop_iteration():
            for begin_step, _, iterator in epoch_iterator:
                num_steps = _window_length(epoch_iterator, begin_step, accum_steps)
                if num_steps < accum_steps and remainder == "drop":
                    break
                callbacks.on_train_batch_begin(begin_step)
                processed, logs = window(iterator, num_steps)
                if processed == 0:
                    raise StopIteration
                callbacks.on_train_batch_end(begin_step + processed - 1, logs)
                if model.stop_training:
                    break
        epoch_logs = dict(model._get_metrics_result_or_logs(logs))
        epoch_logs.update(validation.run(epoch))
        epoch_logs["learning_rate"] = float(ops.convert_to_numpy(model.optimizer.learning_rate))
        callbacks.on_epoch_end(epoch, epoch_logs)
        training_logs = epoch_logs
        if model.stop_training:
            break
    if isinstance(model.optimizer, optimizers_module.Optimizer) and epochs > 0:
        model.optimizer.finalize_variable_values(model.trainable_weights)
    validation.close()
    callbacks.on_train_end(logs=training_logs)
    return model.history


def _check_arguments(model, accum_steps, remainder, steps_per_epoch):
    if isinstance(accum_steps, bool) or not isinstance(accum_steps, numbers.Integral):
        raise TypeError(
            f"accum_steps must be a positive int (micro-batches per update); got {accum_steps!r} "
            f"of type {type(accum_steps).__name__}. Pass e.g. accum_steps=4."
        )
    if accum_steps < 1:
        raise ValueError(
            f"accum_steps must be a positive int (micro-batches per update); got {accum_steps}. "
            "Use accum_steps=1 for no accumulation."
        )
    if remainder not in REMAINDERS:
        raise ValueError(
            f"remainder must be one of {REMAINDERS}; got {remainder!r}. 'apply' applies a window "
            "cut short at the end of an epoch as its own update, 'drop' discards it."
        )
    if steps_per_epoch is not None and (
        isinstance(steps_per_epoch, bool)
        or not isinstance(steps_per_epoch, numbers.Integral)
        or steps_per_epoch < 1
    ):
        raise ValueError(
            f"steps_per_epoch must be None or a positive int (micro-batches per epoch); got "
            f"{steps_per_epoch!r}."
        )
    if not getattr(model, "compiled", False) or model.optimizer is None:
        raise ValueError(
            "model must be compiled with an optimizer and a loss before fit_accumulated: call "
            "model.compile(optimizer=..., loss=...) first."
        )
    if model.optimizer.gradient_accumulation_steps:
        raise ValueError(
            "model's optimizer has gradient_accumulation_steps="
            f"{model.optimizer.gradient_accumulation_steps}, which would accumulate a second time "
            "(and inexactly). Compile with an optimizer without gradient_accumulation_steps and "
            "pass accum_steps to fit_accumulated instead."
        )


def _build(model, epoch_iterator):
    """Builds model, metrics, loss and optimizer from one local batch, before any tracing.

    The window's accumulators mirror the trainable variables, so they must exist first. Under a
    multi-replica strategy the batch of the first local replica is used (summing batches across
    workers, as `Model.fit` does, fails under MultiWorkerMirroredStrategy).
    """
    strategy = model.distribute_strategy
    for _, _, iterator in epoch_iterator:
        batch = next(iterator)
        break
    batch = tree.map_structure(
        lambda v: strategy.experimental_local_results(v)[0] if v is not None else None, batch
    )
    with strategy.scope():
        model._symbolic_build(data_batch=batch)


def _window_length(epoch_iterator, begin_step, accum_steps):
    """Micro-batches the window starting at `begin_step` may take (fewer at an epoch's end)."""
    num_batches = epoch_iterator.num_batches
    if num_batches is None:
        return accum_steps
    return min(accum_steps, num_batches - begin_step)


class _Validation:
    """Runs `model.evaluate` at the end of the epochs `validation_freq` selects, as `fit` does."""

    def __init__(self, model, data, batch_size, steps, freq, callbacks):
        self.model = model
        self.data = data
        self.batch_size = batch_size
        self.steps = steps
        self.freq = freq
        self.callbacks = callbacks

    def run(self, epoch):
        if self.data is None or not self.model._should_eval(epoch, self.freq):
            return {}
        x, y, sample_weight = data_adapter_utils.unpack_x_y_sample_weight(self.data)
        if getattr(self.model, "_eval_epoch_iterator", None) is None:
            self.model._eval_epoch_iterator = TFEpochIterator(
                x=x,
                y=y,
                sample_weight=sample_weight,
                batch_size=self.batch_size,
                distribute_strategy=self.model.distribute_strategy,
                steps_per_execution=self.model.steps_per_execution,
                steps_per_epoch=self.steps,
                shuffle=False,
            )
        logs = self.model.evaluate(
            x=x,
            y=y,
            sample_weight=sample_weight,
            batch_size=self.batch_size,
            steps=self.steps,
            callbacks=self.callbacks,
            return_dict=True,
            _use_cached_eval_dataset=True,
        )
        return {f"val_{name}": value for name, value in logs.items()}

    def close(self):
        if getattr(self.model, "_eval_epoch_iterator", None) is not None:
            del self.model._eval_epoch_iterator
