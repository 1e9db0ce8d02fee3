"""Telling a sequence its epoch: the callback `fit_accumulated` adds, and `Model.fit` users can add.

Keras' `Model.fit` reports each epoch's number to its callbacks before it reads the epoch's first
batch; `EpochCallback` passes it on (`set_epoch`), so the augmentations of epoch `e` are the same in
every process, through `to_tf_dataset()`, and after a resume with `initial_epoch` or
`BackupAndRestore`. `epoch_callbacks(x)` finds the sequence behind the data given to `fit`: the
sequence itself, or the one a dataset from its `to_tf_dataset()` was made of.

This module imports neither albumentations nor OpenCV.
"""

import weakref
from typing import Any

import keras

_SEQUENCE_OF_DATASET: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


class EpochCallback(keras.callbacks.Callback):
    """Sets `sequence`'s epoch to the one `fit` starts, before the epoch's batches are read.

    Args:
        sequence: anything with `set_epoch(epoch)`, e.g. an `AugmentedSequence`.

    Example:

    >>> class Recorder:
    ...     def set_epoch(self, epoch):
    ...         self.epoch = epoch
    >>> recorder = Recorder()
    >>> EpochCallback(recorder).on_epoch_begin(2)
    >>> recorder.epoch
    2
    """

    def __init__(self, sequence: Any) -> None:
        super().__init__()
        if not callable(getattr(sequence, "set_epoch", None)):
            raise TypeError(
                f"`sequence` must have a set_epoch(epoch) method (e.g. an AugmentedSequence); received "
                f"{type(sequence).__name__}."
            )
        self.sequence = sequence

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.sequence.set_epoch(epoch)


def remember_dataset(dataset: Any, sequence: Any) -> None:
    """Records that `dataset` serves `sequence`'s batches, for `epoch_callbacks(dataset)`.

    The record goes with the dataset (it holds the dataset weakly).

    Example:

    >>> import tensorflow as tf
    >>> class Sequence:
    ...     def epoch_callback(self):
    ...         return "callback"
    >>> dataset = tf.data.Dataset.range(2)
    >>> remember_dataset(dataset, Sequence())
    >>> epoch_callbacks(dataset)
    ['callback']
    """
    _SEQUENCE_OF_DATASET[dataset] = sequence


def epoch_callbacks(x: Any) -> list[keras.callbacks.Callback]:
    """The callbacks that keep `x`'s epoch equal to `fit`'s: `[callback]` or `[]`.

    Args:
        x: the training data given to `fit`: an `AugmentedSequence` or a dataset its
            `to_tf_dataset()` returned get their sequence's `epoch_callback()`; anything else
            (including a dataset derived from such a dataset) gets none.

    Example:

    >>> epoch_callbacks([1, 2, 3])
    []
    """
    make = getattr(remembered_sequence(x), "epoch_callback", None)
    return [make()] if callable(make) else []


def remembered_sequence(x: Any) -> Any:
    """The sequence a dataset recorded by `remember_dataset` serves, or `x` itself for anything else.

    Example:

    >>> remembered_sequence([1, 2])
    [1, 2]
    """
    try:
        return _SEQUENCE_OF_DATASET.get(x, x)
    except TypeError:  # unhashable data, e.g. a list or a dict of arrays
        return x
