"""`fit_accumulated()`: `Model.fit` with exact gradient accumulation.

Keras' own `Model.fit` drives the run: data adapters and their workers, callbacks, validation, the
progress bar, `keras.config.set_max_epochs`, metric resets and `History` are Keras'. This module only
supplies the function `Model.fit` calls once per execution (`model.train_function`), which runs whole
accumulation windows, and restores the model's own functions afterwards, also when the run fails.
"""

from typing import Any

import keras

from keras_trainx import compat
from keras_trainx.accumulation import WindowStep
from keras_trainx.loss_normalization import loss_reduction
from keras_trainx.data.epochs import epoch_callbacks
from keras_trainx.validation import check_choice, check_int

REMAINDERS = ("apply", "drop")


def fit_accumulated(
    model: keras.Model,
    x: Any = None,
    y: Any = None,
    *,
    accum_steps: int,
    remainder: str = "apply",
    **fit_kwargs: Any,
) -> keras.callbacks.History:
    """Trains `model` like `model.fit`, with one optimizer update per `accum_steps` micro-batches.

    Every update equals one `Model.fit` step on the concatenation of its window's micro-batches: the
    per-sample (weighted) losses are summed over the window and divided by the count the big batch
    would divide by, so unequal micro-batches, sample weights, class weights, masked losses and every
    Keras loss reduction give exactly the big-batch gradient. Regularization losses count once per
    update; the optimizer step counter, learning-rate schedules, weight decay, gradient clipping and
    EMA act once per update. The reported `loss` is each window's big-batch loss; other metrics
    update on every micro-batch, which gives the big batch's values for Keras' stateful metrics.

    Keras' own `Model.fit` runs the loop (the model class's `fit`, so a subclass that overrides it,
    as KerasHub tasks do to attach preprocessing, keeps its behaviour): every `Model.fit` argument
    is accepted, callbacks, validation and `History` are `fit`'s. One compiled call runs a whole
    window: micro-steps accumulate into per-replica variables with no cross-replica traffic, then
    one `apply_gradients` all-reduces once (under `tf.distribute`, build and compile the model under
    `strategy.scope()`). An `AugmentedSequence` given as `x` is told each epoch's number.

    Args:
        model: a compiled `keras.Model`. Its optimizer must not use Keras'
            `gradient_accumulation_steps`. A model that overrides `train_step` trains with its own
            step when `accum_steps=1`; for `accum_steps > 1` override `compute_loss` instead.
        x, y: training data, as for `Model.fit`: numpy arrays or tensors, a `tf.data.Dataset`, a
            `keras.utils.PyDataset` or a Python generator (the last three yield micro-batches).
        accum_steps: positive int, micro-batches per update. The effective batch size is
            `batch_size * accum_steps`.
        remainder: what to do with a window cut short by the end of an epoch: `"apply"` (default)
            applies it as its own update, normalized by its own samples; `"drop"` discards it (for
            inputs of unknown length its micro-batches have then already counted in the metrics
            other than `loss`).
        **fit_kwargs: any argument of `Model.fit`. `batch_size` and `steps_per_epoch` count
            micro-batches; `compile(steps_per_execution=k)` runs `k` updates per compiled call.

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
    accum_steps = check_int("accum_steps", accum_steps, minimum=1,
                            hint="It counts micro-batches per update; 1 means no accumulation.")
    check_choice("remainder", remainder, REMAINDERS,
                 hint="'apply' applies a window cut short at the end of an epoch as its own "
                      "update, 'drop' discards it.")
    _check_model(model, accum_steps)
    _check_fit_counts(fit_kwargs)
    if type(model).train_step is not keras.Model.train_step:
        return model.fit(x, y, **fit_kwargs)
    loss_reduction(model)

    steps_per_execution = model.steps_per_execution
    saved = (model.train_function, model.test_function, steps_per_execution)
    position = _WindowPosition()
    added = [position, *epoch_callbacks(x)]
    fit_kwargs["callbacks"] = _with_callbacks(fit_kwargs.get("callbacks"), added)
    try:
        with compat.build_from_local_batch(model):
            # Keras builds the model (above), then calls `make_train_function()`, which keeps the
            # function set here, and calls it once per execution of `steps_per_execution` batches.
            model.train_function = _TrainFunction(
                model, accum_steps, steps_per_execution, remainder == "apply", position
            )
            model.test_function = None  # validation runs with this execution length too
            model.steps_per_execution = accum_steps * steps_per_execution
            return model.fit(x, y, **fit_kwargs)
    finally:
        model.train_function, model.test_function, model.steps_per_execution = saved
        if isinstance(fit_kwargs["callbacks"], keras.callbacks.CallbackList):
            for callback in added:
                fit_kwargs["callbacks"].callbacks.remove(callback)


def _check_fit_counts(fit_kwargs: dict[str, Any]) -> None:
    """Refuses counts of `fit` that have no meaning (Keras would take `batch_size=0` for its default)."""
    for name, minimum in (("batch_size", 1), ("epochs", 0), ("initial_epoch", 0), ("steps_per_epoch", 1),
                          ("validation_batch_size", 1), ("validation_steps", 1)):
        if fit_kwargs.get(name) is not None:
            check_int(name, fit_kwargs[name], minimum=minimum)


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


class _WindowPosition(keras.callbacks.Callback):
    """Tells the train function where in the epoch its execution begins.

    With `steps_per_epoch`, `Model.fit` keeps one data iterator across epochs, so an execution must
    stop at the epoch's last micro-batch instead of running until the data ends.
    """

    def __init__(self) -> None:
        super().__init__()
        self.begin_step = 0

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        self.begin_step = batch

    def micro_batches_left(self, wanted: int) -> int:
        """How many of `wanted` micro-batches the epoch still holds (all, if its length is unknown)."""
        steps = (self.params or {}).get("steps")
        if not steps:
            return wanted
        return max(0, min(wanted, steps - self.begin_step))


class _TrainFunction:
    """`model.train_function` for `Model.fit`: `steps_per_execution` accumulation windows a call."""

    def __init__(self, model: keras.Model, accum_steps: int, windows_per_call: int,
                 apply_partial: bool, position: _WindowPosition) -> None:
        self.model = model
        self.accum_steps = accum_steps
        self.windows_per_call = windows_per_call
        self.apply_partial = apply_partial
        self.position = position
        self._window: WindowStep | None = None

    def __call__(self, iterator: Any) -> dict:
        if self._window is None:  # the model is built by now: Keras builds it before the first call
            self._window = WindowStep.for_model(self.model, self.apply_partial)
        window = self._window
        left = self.position.micro_batches_left(self.accum_steps * self.windows_per_call)
        consumed = 0
        logs: dict = {}
        while left > 0:
            length = min(self.accum_steps, left)
            if length < self.accum_steps and not self.apply_partial:
                processed = window.skip(iterator, length)
                logs = self.model.get_metrics_result()
            else:
                processed, logs = window(iterator, length)
            consumed += processed
            left -= length
            if processed < length:
                break
        if consumed == 0:
            raise StopIteration
        return logs
