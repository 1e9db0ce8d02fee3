"""Builds an `AugmentedSequence`'s batches in worker processes, for `to_tf_dataset()`.

albumentations' per-sample transforms hold Python's GIL for much of their time on small images, so
threads add little; processes use every core. The workers are forks of a launcher process without
TensorFlow (`process_launcher`: the training process's TensorFlow threads make `fork` of it unsafe),
started once per training process, which has imported NumPy, OpenCV and albumentations. A worker
receives the sequence's `BatchBuilder` (`sequence.for_workers()`, no Keras in it) pickled, once, and then
builds batch `index` of epoch `epoch` on request, for as long as its dataset lives
(`process_worker`). Randomness is a pure function of (seed, epoch, index), so a worker's batch is the
single-process batch. Each worker runs OpenCV with one thread (`cv2.setNumThreads(1)`): the workers
already fill the cores, and OpenCV's own threads would wait for work on them. More workers than the
process's usable cores would only add memory and start-up time: they are capped, with a warning.

Batches come back without copies where the system has `memfd_create` (Linux): the worker writes the
batch's arrays into a shared-memory slot, and the training process hands views of that slot to
TensorFlow, which keeps them (64-byte aligned) without a copy; a slot is reused once TensorFlow has
let go of every array of its batch. A batch kept after its dataset is gone keeps its own slot mapped,
no other. Elsewhere, or for a batch that does not fit its slot, the arrays are pickled through the
worker's socket.

The workers end when their `ProcessBatches` is deleted (with the dataset that holds it), at the latest
when the interpreter exits, and also when the training process dies without either (killed, a notebook
kernel that crashed): a worker waits for requests on a socket whose other end only the training
process holds, and ends when it reads the end of it (after the batch it is building, if any). A
worker that dies (a crash, `os._exit()`, SIGKILL from the out-of-memory killer) fails the batches it
owed with an error naming it and how it ended; workers that cannot all start (the open-file limit)
are stopped before the error is raised.

A worker runs the training process's main script (as `__mp_main__`, like Python's spawn) only when a
transform is defined in it: a script without an `if __name__ == "__main__":` guard would then run
again in every worker, and is refused at once, saying why.
"""

import ast
import collections
import concurrent.futures
import errno
import functools
import io
import mmap
import multiprocessing
import os
import pickle
import queue
import resource
import signal
import socket
import subprocess
import sys
import threading
import types
import warnings
import weakref
from multiprocessing import reduction
from typing import Any

import numpy as np

from keras_trainx.data import process_launcher
from keras_trainx.data.process_worker import InSlot, aligned, map_arrays

GUARD_HINT = (
    "A transform of the sequence is defined in the main script, so worker processes run the script "
    "(as Python's spawn does) to import it, and a script that builds and iterates the dataset at its top "
    "level would run again in every worker. Put the script's work under `if __name__ == \"__main__\":`, "
    "define the transform in a module of its own, or build the sequence with use_multiprocessing=False "
    "(threads)."
)

SHARED_SLOTS = hasattr(os, "memfd_create")


def usable_cores() -> int:
    """The number of cores this process may run on (its CPU affinity where the system has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class _Pickler(pickle.Pickler):
    """Pickles the builder and notes the classes and functions it takes from `__main__`."""

    def __init__(self, file: Any) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.from_main: list[str] = []

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, (type, types.FunctionType)) and obj.__module__ == "__main__":
            self.from_main.append(obj.__qualname__)
        return NotImplemented


def _pickle(builder: Any) -> tuple[bytes, list[str]]:
    """The pickled builder, and the names it takes from `__main__`."""
    buffer = io.BytesIO()
    pickler = _Pickler(buffer)
    try:
        pickler.dump(builder)
    except Exception as error:
        raise ValueError(
            "use_multiprocessing=True sends the sequence to worker processes, but it cannot be "
            f"pickled ({type(error).__name__}: {error}); use picklable transforms (no lambdas or "
            "local functions) or use_multiprocessing=False."
        ) from error
    return buffer.getvalue(), sorted(set(pickler.from_main))


def _main_source() -> tuple[str, str] | None:
    """How a worker imports the main module: `("path", script)`, `("module", name)` for `python -m
    name`, or None (`-c`, interactive sessions, notebooks, a package's `__main__`)."""
    main = sys.modules.get("__main__")
    name = getattr(getattr(main, "__spec__", None), "name", None)
    if name is not None:
        return None if name == "__main__" or name.endswith(".__main__") else ("module", name)
    path = getattr(main, "__file__", None)
    if not isinstance(path, str) or not path.endswith(".py"):
        return None
    return "path", os.path.abspath(path)


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


def _main_for_workers(from_main: list[str]) -> tuple[str, str] | None:
    """What the workers must run of the main module to unpickle `from_main`; refuses what they cannot."""
    if not from_main:
        return None
    names = ", ".join(from_main)
    main = _main_source()
    if main is None:
        raise ValueError(
            f"use_multiprocessing=True: {names} is defined in __main__, which worker processes cannot "
            "import here (an interactive session, a notebook, `python -c` or a package's __main__): define "
            "it in a module (a .py file on the import path), or use use_multiprocessing=False (threads)."
        )
    if main[0] == "path" and not _has_main_guard(main[1]):
        raise RuntimeError(f"use_multiprocessing=True: {main[1]} has no `if __name__ == \"__main__\":` "
                           f"guard, and it defines {names}. {GUARD_HINT}")
    return main


def _read_int(fd: int) -> int | None:
    """One value from a status pipe, or None at its end."""
    data = b""
    while len(data) < process_launcher.STATUS.size:
        try:
            chunk = os.read(fd, process_launcher.STATUS.size - len(data))
        except OSError:
            return None
        if not chunk:
            return None
        data += chunk
    return int(process_launcher.STATUS.unpack(data)[0])


def describe_exit(code: int | None) -> str:
    """How a worker ended, from its exit code (`os.waitstatus_to_exitcode`), for error messages.

    Example:

    >>> describe_exit(-9)
    "was killed by signal 9 (SIGKILL: the system's out-of-memory killer sends it, see `dmesg`, as does `kill -9`)"
    """
    if code is None:
        return "ended (how is unknown: the worker launcher is gone too)"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "an unknown signal"
        why = {"SIGKILL": ": the system's out-of-memory killer sends it, see `dmesg`, as does `kill -9`",
               "SIGSEGV": ": a crash in native code (OpenCV, NumPy or a transform's compiled code)"}
        return f"was killed by signal {-code} ({name}{why.get(name, '')})"
    if code == 0:
        return "exited with status 0 without replying (something it ran called os._exit())"
    return f"exited with status {code} (its traceback, if it printed one, is above)"


class Launcher:
    """The training process's handle on its worker launcher (`process_launcher`), a fresh interpreter."""

    def __init__(self) -> None:
        self.control, theirs = socket.socketpair()
        try:
            self.process = subprocess.Popen(process_launcher.command(theirs.fileno()),
                                            env=process_launcher.environment(),
                                            pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
        finally:
            theirs.close()
        self.lock = threading.Lock()

    def start_worker(self, worker_fd: int) -> tuple[int, int]:
        """Starts a worker on socket `worker_fd`; returns its pid and the read end of its status pipe."""
        status, theirs = os.pipe()
        try:
            with self.lock:
                socket.send_fds(self.control, [b"w"], [worker_fd, theirs])
        except OSError:
            os.close(status)
            raise
        finally:
            os.close(theirs)
        pid = _read_int(status)
        if pid is not None and pid > 0:
            return pid, status
        os.close(status)
        if pid is not None:
            raise OSError(-pid, f"the worker launcher could not fork a worker: {os.strerror(-pid)}")
        if self.process.poll() is not None:
            raise OSError(errno.ECHILD, f"the worker launcher (pid {self.process.pid}) ended with status "
                                        f"{self.process.returncode}; its error, if any, is above")
        raise OSError(errno.EMFILE, "the worker launcher received the request without its descriptors: it "
                                    "has too many open files")


_LAUNCHER: Launcher | None = None
_LAUNCHER_LOCK = threading.Lock()


def launcher() -> Launcher:
    """This process's worker launcher, started on first use (and again if it ended)."""
    global _LAUNCHER
    with _LAUNCHER_LOCK:
        if _LAUNCHER is None or _LAUNCHER.process.poll() is not None:
            _LAUNCHER = Launcher()
        return _LAUNCHER


class _Slot:
    """A shared-memory slot for one batch: an anonymous memory file, mapped here and in the workers."""

    def __init__(self, slot_id: int, size: int) -> None:
        self.id, self.size = slot_id, size
        self.descriptor = os.memfd_create(f"keras_trainx-batch-{slot_id}", os.MFD_CLOEXEC)
        weakref.finalize(self, os.close, self.descriptor)
        os.ftruncate(self.descriptor, size)
        self.memory = mmap.mmap(self.descriptor, size)


class _WorkerHandle:
    """The training process's side of one worker: its socket, its requests in flight, and their reader."""

    def __init__(self, setup: tuple, state: bytes) -> None:
        self.conn, theirs = multiprocessing.Pipe()
        try:
            self.pid, self.status = launcher().start_worker(theirs.fileno())
        except BaseException:
            self.conn.close()
            raise
        finally:
            theirs.close()
        self.exit_code: int | None = None
        self.lock = threading.Lock()
        self.pending: collections.deque[concurrent.futures.Future] = collections.deque()
        self.slots_sent: set[int] = set()
        self.alive = True
        self.reader = threading.Thread(target=self._read_replies, daemon=True, name="keras_trainx batch replies")
        self.reader.start()
        try:
            self.conn.send(setup)
            self.conn.send_bytes(state)
        except OSError:  # the worker ended at once: its reader says how
            pass

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
        self.exit_code = _read_int(self.status)
        os.close(self.status)
        with self.lock:
            failed = list(self.pending)
            self.pending.clear()
        for future in failed:
            future.set_exception(self.ended())
        self.conn.close()

    def ended(self) -> RuntimeError:
        """The error for a batch this worker cannot build: it names the worker and how it ended."""
        return RuntimeError(f"worker process {self.pid} of use_multiprocessing=True "
                            f"{describe_exit(self.exit_code)}; the dataset cannot go on without it.")

    def request(self, epoch: int, index: int, slot: _Slot | None) -> concurrent.futures.Future:
        """Sends a batch request; the future gets the worker's reply, or `ended()` if the worker is gone."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self.lock:  # the reader takes the lock to match a reply with its request: none comes before
            if self.alive:
                new_slot = slot is not None and slot.id not in self.slots_sent
                try:
                    self.conn.send((epoch, index, None if slot is None else slot.id,
                                    0 if slot is None else slot.size, new_slot))
                    if new_slot:
                        assert slot is not None
                        reduction.send_handle(self.conn, slot.descriptor, self.pid)
                        self.slots_sent.add(slot.id)
                except OSError:
                    pass
                else:
                    self.pending.append(future)
                    return future
        self.reader.join()
        future.set_exception(self.ended())
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
            worker.reader.join(timeout=60)


def _release(free: "queue.SimpleQueue[_Slot]", slot: _Slot, _: concurrent.futures.Future) -> None:
    free.put(slot)


def _give_back(batches: "weakref.ref[ProcessBatches]", slot: _Slot) -> None:
    """Returns `slot` to its pool for reuse, if the pool still exists (holding it weakly: a batch kept
    after its dataset is gone keeps its own slot mapped, not the pool's others)."""
    pool = batches()
    if pool is not None:
        pool._free.put(slot)


def _start_workers(count: int, setup: tuple, state: bytes) -> list[_WorkerHandle]:
    """Starts `count` workers; if one cannot start, stops those that did and raises OSError saying why."""
    workers: list[_WorkerHandle] = []
    try:
        for _ in range(count):
            workers.append(_WorkerHandle(setup, state))
    except OSError as error:
        _stop(workers, True)
        hint = ""
        if error.errno == errno.EMFILE:
            limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            hint = (f" This process may open {limit} files (`ulimit -n`), and each worker holds 2 of them "
                    "(plus one per shared-memory batch slot): raise the limit or lower workers.")
        raise OSError(error.errno, f"use_multiprocessing=True started {len(workers)} of {count} worker "
                                   f"processes, then failed: {error.strerror or error}.{hint} The workers that "
                                   "had started are stopped.") from error
    return workers


class ProcessBatches:
    """Builds `sequence`'s batches in `sequence.workers` worker processes (at most one per usable core).

    A batch source for `keras_trainx.data.tf_dataset.batch_dataset`: `start_pass()` is the sequence's,
    `epoch_batch(epoch, index)` is computed by a worker (thread-safe: each request goes to the worker
    with the fewest requests in flight, and the batches that follow it are requested ahead).

    Args:
        sequence: an `AugmentedSequence` or a `SequenceShard` of one: what its `for_workers()` returns
            (the sources, targets and transforms) must be picklable.

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
        state, from_main = _pickle(sequence.for_workers())
        setup = ([os.path.abspath(entry) if entry else os.getcwd() for entry in sys.path],
                 _main_for_workers(from_main))
        self.sequence = sequence
        cores = usable_cores()
        self.workers = min(sequence.workers, cores)
        if sequence.workers > cores:
            warnings.warn(f"use_multiprocessing=True with workers={sequence.workers}, but this process may use "
                          f"{cores} cores: starting {cores} worker processes (more would add only memory and "
                          "start-up time; the batches are the same for any number).", stacklevel=3)
        self._workers = _start_workers(self.workers, setup, state)
        self._sending = threading.Lock()
        self._slot_size = 0
        self._slots: list[_Slot] = []
        self._free: queue.SimpleQueue[_Slot] = queue.SimpleQueue()
        self._lookahead = 2 * self.workers
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
        reply = future.result()
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
                    aligned(a.nbytes) for a in _flat_arrays(batch)))
            return batch
        return self._views(batch, slot)

    def changed_by(self, epoch: int, index: int) -> str:
        """The sequence's `changed_by` (computed here, in the training process), if it has one."""
        explain = getattr(self.sequence, "changed_by", None)
        if explain is None:
            return "static shapes need every batch to have the first batch's shapes and dtypes."
        return str(explain(epoch, index))

    def _views(self, batch: Any, slot: _Slot) -> Any:
        """The batch with each `InSlot` replaced by a view of `slot`; the slot is free again when all
        the views (and whatever TensorFlow made of them without copying) are gone."""
        memory = np.frombuffer(slot.memory, np.uint8)  # every view below keeps this array alive

        def view(item: Any) -> Any:
            if not isinstance(item, InSlot):
                return item
            dtype = np.dtype(item.dtype)
            count = int(np.prod(item.shape, dtype=np.int64))
            return memory[item.offset:item.offset + count * dtype.itemsize].view(dtype).reshape(item.shape)

        result = _map_items(view, batch)
        weakref.finalize(memory, _give_back, weakref.ref(self), slot)
        return result

    def close(self) -> None:
        """Ends the worker processes now (they end anyway when this object is deleted)."""
        self._closed.detach()
        _stop(self._workers, True)


def _flat_arrays(batch: Any) -> list[np.ndarray]:
    arrays: list[np.ndarray] = []
    map_arrays(arrays.append, batch)
    return arrays


def _map_items(function: Any, batch: Any) -> Any:
    """`batch` with `function` applied to every leaf (anything but a tuple, list or dict)."""
    if isinstance(batch, (tuple, list)):
        return type(batch)(_map_items(function, item) for item in batch)
    if isinstance(batch, dict):
        return {key: _map_items(function, value) for key, value in batch.items()}
    return function(batch)
