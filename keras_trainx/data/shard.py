"""One input pipeline's share of every batch of an `AugmentedSequence`.

Under a multi-worker strategy each worker feeds its replica a slice of every global batch. A
`SequenceShard` builds only that slice: the rows `np.array_split` gives pipeline `index` of `count`
(the first `size % count` pipelines one row more), loaded and augmented from the sample indices of
the whole batch. A sample's augmentation is a pure function of `(seed, epoch, sample index)`, so the
slices of all pipelines, put together in pipeline order, are the batch one process builds: the same
images in the same order with the same augmentations.

A slice with no rows (a last batch smaller than `count`) is an empty batch of the right shapes
(built from the batch's first sample, which is then left out), so that every pipeline serves the same
number of batches; the distributed iterator hands such a replica an empty batch, as tf.distribute
does for uneven data.
"""

from typing import Any

import numpy as np

from keras_trainx.data.batches import BatchShare, share_rows
from keras_trainx.validation import check_int


class SequenceShard:
    """The rows of every batch of `sequence` that input pipeline `index` of `count` feeds its replica.

    A batch source for `keras_trainx.data.tf_dataset.batch_dataset` (and the worker processes of
    `use_multiprocessing=True`, which build only these rows): it has the sequence's batches, workers
    and passes, and its batch `i` of epoch `e` is its rows of the sequence's `epoch_batch(e, i)`.

    Args:
        sequence: an `AugmentedSequence`.
        index: this pipeline's index, in `[0, count)` (tf.distribute's `input_pipeline_id`).
        count: the number of input pipelines, one per replica (`num_input_pipelines`).

    Example:

    >>> from keras_trainx.data import AugmentedSequence
    >>> seq = AugmentedSequence(np.zeros((10, 8, 8, 3), np.uint8), np.arange(10), batch_size=4,
    ...                         shuffle=False, seed=0)
    >>> [SequenceShard(seq, 3, 4).epoch_batch(0, i)[1].tolist() for i in range(3)]
    [[3], [7], []]
    """

    def __init__(self, sequence: Any, index: int, count: int) -> None:
        self.count = check_int("count", count, minimum=1)
        self.index = check_int("index", index, minimum=0, maximum=count - 1)
        self.sequence = sequence
        self.share = BatchShare(sequence.batches, self.index, self.count)

    @property
    def workers(self) -> int:
        return self.sequence.workers

    @property
    def use_multiprocessing(self) -> bool:
        return self.sequence.use_multiprocessing

    def __len__(self) -> int:
        return len(self.sequence)

    def rows(self, size: int) -> slice:
        """This pipeline's rows of a batch of `size` samples (`np.array_split`'s part `index`).

        Example:

        >>> from keras_trainx.data import AugmentedSequence
        >>> seq = AugmentedSequence(np.zeros((4, 2, 2, 3), np.uint8), batch_size=4, seed=0)
        >>> [SequenceShard(seq, i, 3).rows(8) for i in range(3)]
        [slice(0, 3, None), slice(3, 6, None), slice(6, 8, None)]
        """
        return share_rows(size, self.index, self.count)

    def start_pass(self) -> int:
        return self.sequence.start_pass()

    def epoch_batch(self, epoch: int, index: int) -> tuple:
        """This pipeline's rows of the sequence's batch `index` of epoch `epoch`."""
        return self.build_batch(epoch, index, np.empty)

    def build_batch(self, epoch: int, index: int, empty: Any) -> tuple:
        """`epoch_batch(epoch, index)`, its images in the array `empty(shape, dtype)` returns (see
        `AugmentedSequence.build_batch`)."""
        return self.share.build_batch(epoch, index, empty)

    def for_workers(self) -> BatchShare:
        """What worker processes receive to build this share's batches (no Keras in it)."""
        return self.share
