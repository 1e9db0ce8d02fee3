"""The life of one worker process of `use_multiprocessing=True`: build the batches it is asked for.

This module, and what it imports, is all a worker loads besides the user's transforms: NumPy, OpenCV,
albumentations and the batch-building modules of `keras_trainx.data` (no Keras, no TensorFlow). A
worker talks to the training process over one socket (a `multiprocessing.connection.Connection`):

1. it receives `(sys_path, main)` and then the pickled `BatchBuilder` (or `BatchShare`); unpickling it imports the
   modules its transforms come from. The training process's main script (`main`: `("path", file)` or
   `("module", name)`) is run, as `__mp_main__` like Python's spawn does, only if a transform is
   defined in it;
2. it answers each request `(epoch, index, slot_id, slot_size, new_slot)` with `("batch", batch)` or
   `("error", exception, traceback)`, building the batch's arrays into the shared-memory slot
   `slot_id` (a memory file sent along with the first request that names it) where they fit;
3. it ends on `None`, or when it reads the end of the socket: the training process is gone.

Example (the training process's side is `keras_trainx.data.process_pool`):

>>> writer = SlotWriter(None)
>>> writer.reply((writer.empty((2, 3), np.uint8),))[0].shape
(2, 3)
"""

import io
import mmap
import os
import pickle
import runpy
import sys
import traceback
import types
from multiprocessing import reduction
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from keras_trainx.extras import require

# TensorFlow wraps an array without a copy when its data is aligned to this many bytes.
ALIGNMENT = 64


def aligned(nbytes: int) -> int:
    """`nbytes` rounded up to a multiple of `ALIGNMENT`."""
    return -(-nbytes // ALIGNMENT) * ALIGNMENT


def map_arrays(function: Any, batch: Any) -> Any:
    """`batch` with `function` applied to every array in it (tuples, lists and dicts are walked)."""
    if isinstance(batch, np.ndarray):
        return function(batch)
    if isinstance(batch, (tuple, list)):
        return type(batch)(map_arrays(function, item) for item in batch)
    if isinstance(batch, dict):
        return {key: map_arrays(function, value) for key, value in batch.items()}
    return batch


class InSlot:
    """Where an array of a batch lies in its shared-memory slot (the reply carries this, not the array)."""

    def __init__(self, offset: int, shape: tuple[int, ...], dtype: str) -> None:
        self.offset, self.shape, self.dtype = offset, shape, dtype


class SlotWriter:
    """Places one batch's arrays in a shared-memory slot, one after the other, each 64-byte aligned.

    `empty(shape, dtype)` hands out an array in the slot (the builder writes its images there);
    `reply(batch)` copies the batch's other arrays in and replaces every array in the slot by its
    `InSlot`. Arrays that do not fit stay in the reply (pickled).
    """

    def __init__(self, slot: mmap.mmap | None) -> None:
        self.memory = np.frombuffer(slot, np.uint8) if slot is not None else np.empty(0, np.uint8)
        self.used = 0
        # id -> (where, the array itself): holding the array keeps its id from being reused by another
        self.placed: dict[int, tuple[InSlot, np.ndarray]] = {}

    def _place(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray | None:
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if dtype.hasobject or self.used + nbytes > len(self.memory):
            return None
        array = self.memory[self.used:self.used + nbytes].view(dtype).reshape(shape)
        self.placed[id(array)] = (InSlot(self.used, tuple(shape), dtype.str), array)
        self.used += aligned(nbytes)
        return array

    def empty(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        dtype = np.dtype(dtype)
        array = self._place(shape, dtype)
        return np.empty(shape, dtype) if array is None else array

    def reply(self, batch: Any) -> Any:
        def place(array: np.ndarray) -> Any:
            if id(array) in self.placed:
                return self.placed[id(array)][0]
            copy = self._place(array.shape, array.dtype)
            if copy is None:
                return array
            copy[...] = array
            return self.placed[id(copy)][0]

        return map_arrays(place, batch)


def _run_main(main: tuple[str, str] | None) -> None:
    """Runs the training process's main script as `__mp_main__` (what Python's spawn does)."""
    if main is None:
        raise AttributeError("a transform is defined in __main__, which worker processes cannot import "
                             "(an interactive session or a notebook): define it in a module.")
    kind, where = main
    namespace = (runpy.run_path(where, run_name="__mp_main__") if kind == "path"
                 else runpy.run_module(where, run_name="__mp_main__", alter_sys=True))
    module = types.ModuleType("__mp_main__")
    module.__dict__.update(namespace)
    sys.modules["__main__"] = sys.modules["__mp_main__"] = module


class _Unpickler(pickle.Unpickler):
    """Unpickles the builder, running the main script first when (and only when) it needs a name of it."""

    def __init__(self, data: bytes, main: tuple[str, str] | None) -> None:
        super().__init__(io.BytesIO(data))
        self.main, self.main_run = main, False

    def find_class(self, module: str, name: str) -> Any:
        if module == "__main__" and not self.main_run:
            _run_main(self.main)
            self.main_run = True
        return super().find_class(module, name)


def _load(conn: Connection) -> Any:
    """Receives the import path, the main script and the builder, and returns the builder."""
    sys_path, main = conn.recv()
    sys.path[:] = sys_path
    return _Unpickler(conn.recv_bytes(), main).load()


def run(fd: int) -> int:
    """A worker's life on socket `fd`: build the batches asked for until told to stop or orphaned.

    Returns:
        The process's exit status: 0.
    """
    require("cv2", "AugmentedSequence").setNumThreads(1)
    conn = Connection(fd)
    try:
        builder, failure = _load(conn), None
    except (EOFError, OSError):  # the training process is gone
        return 0
    except (Exception, SystemExit) as error:  # answered to every request, with its traceback
        builder, failure = None, (_picklable(error), traceback.format_exc())
    slots: dict[int, mmap.mmap] = {}
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):  # the training process is gone
            return 0
        if request is None:
            return 0
        epoch, index, slot_id, slot_size, new_slot = request
        if new_slot:
            try:
                descriptor = reduction.recv_handle(conn)
            except (EOFError, OSError):  # the training process is gone
                return 0
            try:
                slots[slot_id] = mmap.mmap(descriptor, slot_size)
            finally:
                os.close(descriptor)
        try:
            if failure is not None:
                reply: tuple = ("error", *failure)
            else:
                writer = SlotWriter(slots.get(slot_id))
                reply = ("batch", writer.reply(builder.build_batch(epoch, index, writer.empty)))
                del writer
        except Exception as error:
            reply = ("error", _picklable(error), traceback.format_exc())
        try:
            conn.send(reply)
        except OSError:  # the training process is gone
            return 0


def _picklable(error: BaseException) -> BaseException:
    try:
        pickle.dumps(error)
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")
    return error
