"""Builds an `AugmentedSequence`'s batches in worker processes, for `to_tf_dataset()`.

albumentations' per-sample transforms hold Python's GIL for much of their time on small images, so
threads add little; processes use every core. Workers start from a fork server that has imported this
package once (not from the training process, whose TensorFlow threads make `fork` unsafe), receive the
pickled sequence once, and then build batch `index` of epoch `epoch` on request. Randomness is a pure
function of (seed, epoch, index), so a worker's batch is the single-process batch.
"""

import concurrent.futures
import multiprocessing
import pickle
import weakref
from typing import Any

import keras

_SEQUENCE: Any = None


def _start_worker(state):
    global _SEQUENCE
    import cv2

    # One OpenCV thread per worker process: the workers already fill the cores.
    cv2.setNumThreads(1)
    _SEQUENCE = pickle.loads(state)


def _build_batch(epoch, index):
    _SEQUENCE.set_epoch(epoch)
    return _SEQUENCE[index]


class ProcessBatches(keras.utils.PyDataset):
    """A view of `sequence` whose batches are built by `sequence.workers` worker processes.

    Args:
        sequence: an `AugmentedSequence` (picklable: its sources, targets and transforms).

    The epoch hooks act on `sequence` itself; each request carries its current epoch.
    """

    def __init__(self, sequence):
        super().__init__(workers=sequence.workers)
        try:
            state = pickle.dumps(sequence)
        except Exception as error:
            raise ValueError(
                "use_multiprocessing=True sends the sequence to worker processes, but it cannot be "
                f"pickled ({type(error).__name__}: {error}); use picklable transforms (no lambdas or "
                "local functions) or use_multiprocessing=False."
            ) from error
        self.sequence = sequence
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])
        self._pool = concurrent.futures.ProcessPoolExecutor(
            sequence.workers, mp_context=context, initializer=_start_worker, initargs=(state,)
        )
        weakref.finalize(self, self._pool.shutdown, wait=False, cancel_futures=True)

    def __len__(self):
        return len(self.sequence)

    def __getitem__(self, index):
        return self._pool.submit(_build_batch, self.sequence.epoch, index).result()

    def on_epoch_begin(self):
        self.sequence.on_epoch_begin()

    def on_epoch_end(self):
        self.sequence.on_epoch_end()
