"""Builds an `AugmentedSequence`'s batches in worker processes, for `to_tf_dataset()`.

albumentations' per-sample transforms hold Python's GIL for much of their time on small images, so
threads add little; processes use every core. Workers start from a fork server that has imported this
package once (not from the training process, whose TensorFlow threads make `fork` unsafe), receive the
pickled sequence once, and then build batch `index` of epoch `epoch` on request. Randomness is a pure
function of (seed, epoch, index), so a worker's batch is the single-process batch.

The workers end when their `ProcessBatches` is deleted (with the dataset that holds it) or, at the
latest, when the interpreter exits. Like every process started by Python's fork server (and spawn),
a worker first imports the main script: a script that builds and iterates such a dataset at its top
level needs the `if __name__ == "__main__":` guard, or each worker would run it again (Python stops
such a worker). `ProcessBatches` therefore refuses to start workers for a main script that has no
such guard at all, at once and saying why; should a worker still end early, the first batch request
raises with the same advice instead of a bare `BrokenProcessPool`.
"""

import ast
import concurrent.futures
import multiprocessing
import pickle
import sys
import weakref
from typing import Any

from keras_trainx.extras import require

_SEQUENCE: Any = None

GUARD_HINT = (
    "Worker processes start by importing the main script (Python's fork server, as with spawn), so a "
    "script that builds and iterates the dataset at its top level would run again in every worker; "
    "Python stops such a worker. Put the script's work under `if __name__ == \"__main__\":`, or build "
    "the sequence with use_multiprocessing=False (threads)."
)


def _start_worker(state: bytes) -> None:
    global _SEQUENCE
    # One OpenCV thread per worker process: the workers already fill the cores.
    require("cv2", "AugmentedSequence").setNumThreads(1)
    _SEQUENCE = pickle.loads(state)


def _build_batch(epoch: int, index: int) -> Any:
    return _SEQUENCE.epoch_batch(epoch, index)


def _main_script() -> str | None:
    """The path of the main script that worker processes will import, or None (`-m`, -c, notebooks)."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if getattr(main, "__spec__", None) is not None or not isinstance(path, str) or not path.endswith(".py"):
        return None
    return path


def _has_main_guard(path: str) -> bool:
    """Whether the script compares `__name__` with "__main__" anywhere (True when it cannot be read)."""
    try:
        with open(path, encoding="utf-8") as file:
            tree = ast.parse(file.read())
    except (OSError, SyntaxError, ValueError):
        return True
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and isinstance(node.left, ast.Name) and node.left.id == "__name__":
            if any(isinstance(c, ast.Constant) and c.value == "__main__" for c in node.comparators):
                return True
    return False


class ProcessBatches:
    """Builds `sequence`'s batches in `sequence.workers` worker processes.

    A batch source for `keras_trainx.data.tf_dataset.batch_dataset`: `start_pass()` is the sequence's,
    `epoch_batch(epoch, index)` is computed by a worker (thread-safe: requests queue for the workers).

    Args:
        sequence: an `AugmentedSequence` (picklable: its sources, targets and transforms).

    Example (in a script, under `if __name__ == "__main__":`):

    >>> import numpy as np
    >>> from keras_trainx.data import AugmentedSequence
    >>> sequence = AugmentedSequence(np.zeros((4, 8, 8, 3), np.uint8), batch_size=2, workers=2,
    ...                              use_multiprocessing=True, seed=0)
    >>> batches = ProcessBatches(sequence)
    >>> batches.epoch_batch(0, 1)[0].shape
    (2, 8, 8, 3)
    >>> batches.close()
    """

    def __init__(self, sequence: Any) -> None:
        try:
            state = pickle.dumps(sequence)
        except Exception as error:
            raise ValueError(
                "use_multiprocessing=True sends the sequence to worker processes, but it cannot be "
                f"pickled ({type(error).__name__}: {error}); use picklable transforms (no lambdas or "
                "local functions) or use_multiprocessing=False."
            ) from error
        script = _main_script()
        if script is not None and not _has_main_guard(script):
            raise RuntimeError(f"use_multiprocessing=True: {script} has no `if __name__ == \"__main__\":` "
                               f"guard. {GUARD_HINT}")
        self.sequence = sequence
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])
        self._pool = concurrent.futures.ProcessPoolExecutor(
            sequence.workers, mp_context=context, initializer=_start_worker, initargs=(state,)
        )
        weakref.finalize(self, self._pool.shutdown, wait=False, cancel_futures=True)

    def __len__(self) -> int:
        return len(self.sequence)

    def start_pass(self) -> int:
        return self.sequence.start_pass()

    def epoch_batch(self, epoch: int, index: int) -> Any:
        try:
            return self._pool.submit(_build_batch, epoch, index).result()
        except concurrent.futures.process.BrokenProcessPool as error:
            hint = GUARD_HINT if _main_script() is not None else "See the worker's error above."
            raise RuntimeError(
                f"the worker processes of use_multiprocessing=True ended before building a batch. {hint}"
            ) from error

    def close(self) -> None:
        """Ends the worker processes now (they end anyway when this object is deleted)."""
        self._pool.shutdown(wait=True, cancel_futures=True)
