"""Recognizes the extra `on_epoch_end()` call Keras makes before the first epoch.

`Model.fit`, `evaluate` and the data adapters call `EpochIterator.reset()` at the start of a run, and
`reset()` calls the dataset's `on_epoch_end()` although no epoch has ended (keras 3.15,
`keras/src/trainers/epoch_iterator.py`). A counter that advanced on every call would start `fit` at
epoch 1 while a manual loop starts at epoch 0. No pattern of calls tells the two apart (a manual loop
over a two-batch dataset reads batches 0 and 1 and then calls `on_epoch_end()`, exactly like the
signature probe of `fit`), so the call site is checked instead: the frame of `EpochIterator.reset`.
"""

import sys
import types

from keras.src.trainers.epoch_iterator import EpochIterator

_RESET_CODE = EpochIterator.reset.__code__
_FRAMES_TO_SEARCH = 4


def called_from_keras_reset():
    """Whether the running `on_epoch_end()` was called by Keras' `EpochIterator.reset()`.

    Looks at the few frames above the caller of this function (the adapter's `on_epoch_end` sits
    between `reset` and the dataset).

    Returns:
        True when one of those frames runs `EpochIterator.reset`.

    Example:

    >>> called_from_keras_reset()
    False
    """
    frame: types.FrameType | None = sys._getframe(1).f_back
    for _ in range(_FRAMES_TO_SEARCH):
        if frame is None:
            return False
        if frame.f_code is _RESET_CODE:
            return True
        frame = frame.f_back
    return False
