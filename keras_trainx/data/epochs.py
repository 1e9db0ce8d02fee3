"""Telling a sequence its epoch: the callback `fit_accumulated` adds, and `Model.fit` users can add.

Keras' `Model.fit` reports each epoch's number to its callbacks before it reads the epoch's first
batch; the callback passes it to the sequence (`set_epoch`), so the augmentations of epoch `e` are the
same in every process and after a resume with `initial_epoch` or `BackupAndRestore`.
"""

import keras


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

    def __init__(self, sequence):
        super().__init__()
        self.sequence = sequence

    def on_epoch_begin(self, epoch, logs=None):
        self.sequence.set_epoch(epoch)


def epoch_callbacks(x):
    """The callbacks that keep `x`'s epoch equal to `fit`'s: `[x.epoch_callback()]` or `[]`.

    Args:
        x: the training data given to `fit_accumulated`.

    Example:

    >>> epoch_callbacks([1, 2, 3])
    []
    """
    make = getattr(x, "epoch_callback", None)
    return [make()] if callable(make) else []
