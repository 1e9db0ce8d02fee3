"""The private Keras names keras_trainx relies on, and only here, each with why no public API serves.

Everything else in the package uses public Keras and TensorFlow API. Each function below is a thin
accessor, so that a Keras release that moves one of these names breaks one line here. The test suite
runs against the newest `keras-nightly` too, which finds such a move before users do.
"""

import contextlib
from collections.abc import Iterator
from typing import Any

import keras
import tensorflow as tf
from keras.src.backend.common.masking import get_keras_mask
from keras.src.losses.loss import unscale_loss_for_distribution
from keras.src.trainers.data_adapters.data_adapter_utils import NUM_BATCHES_FOR_TENSOR_SPEC
from tensorflow.python.distribute.values import PerReplicaSpec


def loss_tracker(model: Any) -> Any:
    """The `Mean` metric `Model.fit` reports as `loss` (`model._loss_tracker`).

    Keras' own `train_step` updates it; there is no public handle. `model.metrics` lists it, but a
    model that overrides `metrics` may leave it out or list a metric of its own named "loss".
    """
    return model._loss_tracker


def output_loss_metrics(model: Any) -> list:
    """The `Mean` metrics `Model.fit` reports each output's loss with (`a_loss`, ...), or `[]`.

    They belong to the compiled `CompileLoss` (`model._compile_loss.metrics`), which updates them
    inside `compute_loss`; a single-output model has none. Keras has no public handle on them.
    """
    compile_loss = model._compile_loss
    return list(compile_loss.metrics) if compile_loss is not None else []


def forward_losses(model: Any) -> list[tuple[Any, bool]]:
    """The losses the model's layers added in their last call, each with whether it came from an
    `activity_regularizer` (which Keras divides by the batch size) rather than `add_loss` in `call`.

    `model.losses` mixes these with the weight penalties and keeps no provenance. Each layer's own
    list (`_get_own_losses()`, over `_flatten_layers()`) is what `model.losses` itself is made of;
    Keras has no public handle on either. A layer that has an `activity_regularizer` is taken to
    add no other loss of its own (Keras' layers do not).
    """
    return [(loss, layer.activity_regularizer is not None)
            for layer in model._flatten_layers(include_self=True)
            for loss in layer._get_own_losses()]


def backup_metadata_path(callback: Any) -> str:
    """The file where `keras.callbacks.BackupAndRestore` records the epoch and batch it saved at.

    Keras writes `{"epoch": e, "batch": b}` there with every backup but, on restore, reads only the
    epoch (`Model.fit` then repeats the epoch's batches up to `b`); the path
    (`_training_metadata_path`) has no public name.
    """
    return callback._training_metadata_path


def optimizer_config_with_rate(optimizer: Any, rate: float, schedule: Any) -> dict:
    """`optimizer.get_config()` with another learning rate: `schedule` (a `LearningRateSchedule`
    instance) when the optimizer's own rate is a schedule or callable, else the float `rate`, so that
    `from_config` makes an optimizer with a rate variable exactly when this one has one (the same
    variables, whose values can be copied across).

    `get_config` serializes a learning-rate schedule, which fails for a schedule without
    `get_config`, and `from_config` cannot load a schedule that is not registered; a copy that sets
    its own rate (the LR range test) needs neither. Keras has no public way to read the rest of the
    configuration, nor whether the rate is a variable (`optimizer.learning_rate` evaluates a
    schedule): the rate (`optimizer._learning_rate`) is read, and replaced in a shallow twin's
    `__dict__`, bypassing `__setattr__`, whose tracking and the public setter's untracking of a rate
    variable would reach the variable lists the twin shares with the user's optimizer. (`copy.copy`
    does not serve: Keras objects copy through their config, which fails the same way.) A
    `LossScaleOptimizer`'s configuration holds its inner optimizer's whole, rate included.
    """
    twin = object.__new__(type(optimizer))
    twin.__dict__.update(vars(optimizer), _learning_rate=rate)
    config = twin.get_config()
    if "learning_rate" in config:  # a LossScaleOptimizer has none: its inner optimizer's is serialized
        config["learning_rate"] = rate if isinstance(optimizer._learning_rate, keras.Variable) else schedule
    return config


def keras_mask(tensor: Any) -> Any:
    """The Keras mask a layer attached to `tensor` (e.g. from `Embedding(mask_zero=True)`), or None.

    Keras 3 has no public getter; the losses read it with this same private function.
    """
    return get_keras_mask(tensor)


def unscale_for_distribution(loss: Any) -> Any:
    """Undoes the 1/num_replicas factor Keras' compiled losses apply inside `strategy.run`.

    Keras' `train_step` calls this same private function before updating its loss tracker.
    """
    return unscale_loss_for_distribution(loss)


def signature_batches() -> int:
    """How many first batches of a `PyDataset` Keras reads for its output signature (2).

    `PyDatasetAdapter.get_tf_dataset` reads batches `0, 1, ...` of a finite `PyDataset` before
    `Model.fit` resets its iterator with a lone `on_epoch_end()`; `AugmentedSequence` tells that look
    from an epoch served by a manual loop. Keras documents neither the look nor its length.
    """
    return NUM_BATCHES_FOR_TENSOR_SPEC


@contextlib.contextmanager
def build_from_local_batch(model: Any) -> Iterator[None]:
    """Makes `Model.fit` build `model` from the spec of one replica's batch, before any tracing.

    The accumulators of `fit_accumulated` mirror the trainable variables, so these must exist before
    the window function is traced. `Model.fit` builds eagerly only under a strategy scope, from the
    MEAN of the first batch across replicas, which fails under MultiWorkerMirroredStrategy ("Attempt
    to convert a value (PerReplica...)") and when the first batch does not split evenly
    (keras-team/keras#19246); reading that batch also costs a `PyDataset` with workers a batch it
    then serves out of order. Keras has no public hook for this step: `Model.fit` calls the private
    `_maybe_symbolic_build(iterator=...)`, and `_symbolic_build` does the work from anything with a
    `shape` and a `dtype`. This context manager replaces the former on the instance for the duration
    of one `fit` call and builds from the data's `element_spec` (the epoch iterator's private
    `_distributed_dataset`; a replica's spec inside TensorFlow's `PerReplicaSpec._value_specs`),
    which reads no data.
    """

    def local_spec(spec: Any) -> Any:
        if isinstance(spec, (tf.OptionalSpec, tf.NoneTensorSpec)):
            return None  # an optional input the data leaves out, as Model.fit sees it
        if isinstance(spec, PerReplicaSpec):
            return spec._value_specs[0]
        return spec

    def build(iterator: Any = None, data_batch: Any = None) -> None:
        if data_batch is None:
            specs = iterator._distributed_dataset.element_spec
            data_batch = tf.nest.map_structure(local_spec, specs)
        with model.distribute_strategy.scope():
            model._symbolic_build(data_batch=data_batch)

    object.__setattr__(model, "_maybe_symbolic_build", build)
    try:
        yield
    finally:
        object.__delattr__(model, "_maybe_symbolic_build")
