"""Builds an `AugmentedSequence`'s batches in worker processes, for `to_tf_dataset()`.

albumentations' per-sample transforms hold Python's GIL for much of their time on small images, so
threads add little; processes use every core. Workers start from a fork server that has imported this
package once (not from the training process, whose TensorFlow threads make `fork` unsafe), receive the
pickled sequence once, and then build batch `index` of epoch `epoch` on request, for as long as their
dataset lives. Randomness is a pure function of (seed, epoch, index), so a worker's batch is the
single-process batch. Each worker runs OpenCV with one thread (`cv2.setNumThreads(1)`, in the worker
only): the workers already fill the cores, and OpenCV's own threads would wait for work on them.

Batches come back without copies where the system has `memfd_create` (Linux): the worker writes the
batch's arrays into a shared-memory slot, and the training process hands views of that slot to
TensorFlow, which keeps them (64-byte aligned) without a copy; a slot is reused once TensorFlow has
let go of every array of its batch. Elsewhere, or for a batch that does not fit its slot, the arrays
are pickled through the worker's pipe.

The workers end when their `ProcessBatches` is deleted (with the dataset that holds it), at the latest
when the interpreter exits, and also when the training process dies without either (killed, a notebook
kernel that crashed): a worker waits for requests on a pipe whose other end only the training process
holds, and ends when it reads the end of that pipe (after the batch it is building, if any).

Like every process started by Python's fork server (and spawn), a worker first imports the main script:
a script that builds and iterates such a dataset at its top level needs the
`if __name__ == "__main__":` guard, or each worker would run it again (Python stops such a worker).
`ProcessBatches` therefore refuses to start workers for a main script that has no such guard at all, at
once and saying why; should a worker still end early, the batch request raises with the same advice.
"""

import ast
import collections
import concurrent.futures
import functools
import mmap
import multiprocessing
import os
import pickle
import queue
import sys
import threading
import traceback
import weakref
from multiprocessing import reduction
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from keras_trainx.extras import require

GUARD_HINT = (
    "Worker processes start by importing the main script (Python's fork server, as with spawn), so a "
    "script that builds and iterates the dataset at its top level would run again in every worker; "
    "Python stops such a worker. Put the script's work under `if __name__ == \"__main__\":`, or build "
    "the sequence with use_multiprocessing=False (threads)."
)

# TensorFlow wraps an array without a copy when its data is aligned to this many bytes.
ALIGNMENT = 64
SHARED_SLOTS = hasattr(os, "memfd_create")


def _aligned(nbytes: int) -> int:
    return -(-nbytes // ALIGNMENT) * ALIGNMENT


def _map_arrays(function: Any, batch: Any) -> Any:
    """`batch` with `function` applied to every array in it (tuples, lists and dicts are walked)."""
    if isinstance(batch, np.ndarray):
        return function(batch)
    if isinstance(batch, (tuple, list)):
        return type(batch)(_map_arrays(function, item) for item in batch)
    if isinstance(batch, dict):
        return {key: _map_arrays(function, value) for key, value in batch.items()}
    return batch


class _InSlot:
    """Where an array of a batch lies in its shared-memory slot (the reply carries this, not the array)."""

    def __init__(self, offset: int, shape: tuple[int, ...], dtype: str) -> None:
        self.offset, self.shape, self.dtype = offset, shape, dtype


class _SlotWriter:
    """Places one batch's arrays in a shared-memory slot, one after the other, each 64-byte aligned.

    `empty(shape, dtype)` hands out an array in the slot (the sequence builds its images there);
    `reply(batch)` copies the batch's other arrays in and replaces every array in the slot by its
    `_InSlot`. Arrays that do not fit stay in the reply (pickled).
    """

    def __init__(self, slot: mmap.mmap | None) -> None:
        self.memory = np.frombuffer(slot, np.uint8) if slot is not None else np.empty(0, np.uint8)
        self.used = 0
        # id -> (where, the array itself): holding the array keeps its id from being reused by another
        self.placed: dict[int, tuple[_InSlot, np.ndarray]] = {}

    def _place(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray | None:
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if dtype.hasobject or self.used + nbytes > len(self.memory):
            return None
        array = self.memory[self.used:self.used + nbytes].view(dtype).reshape(shape)
        self.placed[id(array)] = (_InSlot(self.used, tuple(shape), dtype.str), array)
        self.used += _aligned(nbytes)
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

        return _map_arrays(place, batch)


def _worker(conn: Connection, state: bytes) -> None:
    """A worker's life: build the batches the training process asks for, until told to stop or orphaned."""
    require("cv2", "AugmentedSequence").setNumThreads(1)
    sequence = pickle.loads(state)
    slots: dict[int, mmap.mmap] = {}
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):  # the training process is gone
            return
        if request is None:
            return
        epoch, index, slot_id, slot_size, new_slot = request
        if new_slot:
            descriptor = reduction.recv_handle(conn)
            slots[slot_id] = mmap.mmap(descriptor, slot_size)
            os.close(descriptor)
        try:
            writer = _SlotWriter(slots.get(slot_id))
            reply: tuple = ("batch", writer.reply(sequence.build_batch(epoch, index, writer.empty)))
            del writer
        except Exception as error:
            try:
                pickle.dumps(error)
            except Exception:
                error = RuntimeError(f"{type(error).__name__}: {error}")
            reply = ("error", error, traceback.format_exc())
        try:
            conn.send(reply)
        except OSError:  # the training process is gone
            return


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


class _Slot:
    """A shared-memory slot for one batch: an anonymous memory file, mapped here and in the workers."""

    def __init__(self, slot_id: int, size: int) -> None:
        self.id, self.size = slot_id, size
        self.descriptor = os.memfd_create(f"keras_trainx-batch-{slot_id}", os.MFD_CLOEXEC)
        weakref.finalize(self, os.close, self.descriptor)
        os.ftruncate(self.descriptor, size)
        self.memory = mmap.mmap(self.descriptor, size)


class _WorkerHandle:
    """The training process's side of one worker: its pipe, its requests in flight, and their reader."""

    def __init__(self, context: Any, state: bytes) -> None:
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_worker, args=(child, state), daemon=True,
                                       name="keras_trainx batch worker")
        self.process.start()
        child.close()
        self.lock = threading.Lock()
        self.pending: collections.deque[concurrent.futures.Future] = collections.deque()
        self.slots_sent: set[int] = set()
        self.alive = True
        threading.Thread(target=self._read_replies, daemon=True, name="keras_trainx batch replies").start()

    def _read_replies(self) -> None:
        while True:
            try:
                reply = self.conn.recv()
            except (EOFError, OSError):
                break
            with self.lock:
                future = self.pending.popleft()
            future.set_result(reply)
        with self.lock:
            self.alive = False
            failed = list(self.pending)
            self.pending.clear()
        for future in failed:
            future.set_exception(EOFError("the worker process ended"))
        self.conn.close()

    def request(self, epoch: int, index: int, slot: _Slot | None) -> concurrent.futures.Future:
        """Sends a batch request; the future gets the worker's reply, or EOFError if the worker is gone."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self.lock:  # the reader takes the lock to match a reply with its request: none comes before
            if self.alive:
                new_slot = slot is not None and slot.id not in self.slots_sent
                try:
                    self.conn.send((epoch, index, None if slot is None else slot.id,
                                    0 if slot is None else slot.size, new_slot))
                    if new_slot:
                        assert slot is not None
                        reduction.send_handle(self.conn, slot.descriptor, self.process.pid)
                        self.slots_sent.add(slot.id)
                except OSError:
                    self.alive = False
                else:
                    self.pending.append(future)
                    return future
        future.set_exception(EOFError("the worker process ended"))
        return future

    def stop(self) -> None:
        with self.lock:
            if self.alive:
                try:
                    self.conn.send(None)
                except OSError:
                    pass


def _stop(workers: list[_WorkerHandle], wait: bool) -> None:
    for worker in workers:
        worker.stop()
    if wait:
        for worker in workers:
            worker.process.join(timeout=60)


def _release(free: "queue.SimpleQueue[_Slot]", slot: _Slot, _: concurrent.futures.Future) -> None:
    free.put(slot)


class ProcessBatches:
    """Builds `sequence`'s batches in `sequence.workers` worker processes.

    A batch source for `keras_trainx.data.tf_dataset.batch_dataset`: `start_pass()` is the sequence's,
    `epoch_batch(epoch, index)` is computed by a worker (thread-safe: each request goes to the worker
    with the fewest requests in flight, and the batches that follow it are requested ahead).

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
        self._workers = [_WorkerHandle(context, state) for _ in range(sequence.workers)]
        self._sending = threading.Lock()
        self._slot_size = 0
        self._slots: list[_Slot] = []
        self._free: queue.SimpleQueue[_Slot] = queue.SimpleQueue()
        self._lookahead = 2 * sequence.workers
        self._ahead: dict[tuple[int, int], tuple[concurrent.futures.Future, _Slot | None]] = {}
        self._requested_up_to = -1  # the furthest position (epoch * len + index) requested ahead
        self._closed = weakref.finalize(self, _stop, self._workers, False)

    def __len__(self) -> int:
        return len(self.sequence)

    def start_pass(self) -> int:
        return self.sequence.start_pass()

    def _take_slot(self) -> _Slot | None:
        if not self._slot_size:
            return None
        try:
            return self._free.get_nowait()
        except queue.Empty:
            slot = _Slot(len(self._slots), self._slot_size)
            self._slots.append(slot)
            return slot

    def _request(self, epoch: int, index: int) -> tuple[concurrent.futures.Future, _Slot | None]:
        """Sends `(epoch, index)` to a worker: the workers take the batches of a pass in turn."""
        slot = self._take_slot()
        worker = self._workers[(epoch * len(self) + index) % len(self._workers)]
        return worker.request(epoch, index, slot), slot

    def epoch_batch(self, epoch: int, index: int) -> Any:
        """Batch `index` of epoch `epoch`, built by a worker; its arrays may be views of shared memory.

        Asking for a batch also asks for the `2 * workers` batches that follow it (past the end of the
        pass: the first ones of `epoch + 1`), so that every worker finds its next batch queued when it
        finishes one, also across the end of a pass. A batch depends only on `(epoch, index)`, so what
        is built ahead is what would be built on request; requests no pass asked for are dropped once
        their epoch is two behind.
        """
        n = len(self)
        position = epoch * n + index
        with self._sending:
            request = self._ahead.pop((epoch, index), None)
            if request is None:  # the first request, or a pass that starts elsewhere (a resume)
                request = self._request(epoch, index)
                self._requested_up_to = position
            furthest = position + min(self._lookahead, n)
            for ahead in range(max(position, self._requested_up_to) + 1, furthest + 1):
                key = divmod(ahead, n)
                self._ahead[key] = self._request(*key)
            self._requested_up_to = max(self._requested_up_to, furthest)
            stale = [key for key in self._ahead if key[0] not in (epoch, epoch + 1)]
            dropped = [self._ahead.pop(key) for key in stale]
        for future, slot in dropped:  # free their slots once their replies are in
            if slot is not None:
                future.add_done_callback(functools.partial(_release, self._free, slot))
        future, slot = request
        try:
            reply = future.result()
        except EOFError as error:
            hint = GUARD_HINT if _main_script() is not None else (
                "Its error, if it printed one, is above (a worker the system killed, e.g. for memory, prints none).")
            raise RuntimeError(
                f"the worker processes of use_multiprocessing=True ended before building a batch. {hint}"
            ) from error
        if reply[0] == "error":
            if slot is not None:
                self._free.put(slot)
            raised = reply[1]
            raised.add_note(f"Raised in a worker process of use_multiprocessing=True:\n{reply[2]}")
            raise raised
        batch = reply[1]
        if slot is None:
            if SHARED_SLOTS:
                self._slot_size = max(self._slot_size, sum(
                    _aligned(a.nbytes) for a in _flat_arrays(batch)))
            return batch
        return self._views(batch, slot)

    def _views(self, batch: Any, slot: _Slot) -> Any:
        """The batch with each `_InSlot` replaced by a view of `slot`; the slot is free again when all
        the views (and whatever TensorFlow made of them without copying) are gone."""
        memory = np.frombuffer(slot.memory, np.uint8)  # every view below keeps this array alive

        def view(item: Any) -> Any:
            if not isinstance(item, _InSlot):
                return item
            dtype = np.dtype(item.dtype)
            count = int(np.prod(item.shape, dtype=np.int64))
            return memory[item.offset:item.offset + count * dtype.itemsize].view(dtype).reshape(item.shape)

        result = _map_items(view, batch)
        weakref.finalize(memory, self._free.put, slot)
        return result

    def close(self) -> None:
        """Ends the worker processes now (they end anyway when this object is deleted)."""
        self._closed.detach()
        _stop(self._workers, True)


def _flat_arrays(batch: Any) -> list[np.ndarray]:
    arrays: list[np.ndarray] = []
    _map_arrays(arrays.append, batch)
    return arrays


def _map_items(function: Any, batch: Any) -> Any:
    """`batch` with `function` applied to every leaf (anything but a tuple, list or dict)."""
    if isinstance(batch, (tuple, list)):
        return type(batch)(_map_items(function, item) for item in batch)
    if isinstance(batch, dict):
        return {key: _map_items(function, value) for key, value in batch.items()}
    return function(batch)
