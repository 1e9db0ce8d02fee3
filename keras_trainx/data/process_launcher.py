"""The launcher of the worker processes of `use_multiprocessing=True`: a fork server without TensorFlow.

The training process runs TensorFlow threads, so it must not `fork`; starting each worker as a fresh
interpreter would import albumentations (seconds) in every one. Instead the training process starts
this launcher once, as a fresh interpreter (`subprocess`, which execs), and it imports what building
a batch needs (NumPy, OpenCV, albumentations, `keras_trainx.data.process_worker`) and nothing else.
Each worker is then a `fork` of it: ready at once, sharing the launcher's memory until it writes.

The launcher reads requests on its control socket: each brings two descriptors, the worker's socket
and a status pipe. It forks a worker on the socket (`process_worker.run`) and writes to the status
pipe the worker's pid (a signed 32-bit int), and, once the worker has ended, its exit code as
`os.waitstatus_to_exitcode` gives it (minus the signal that ended it, e.g. -9 for SIGKILL). When it
cannot start one (out of descriptors or processes) it writes `-errno` instead of a pid. It ends when
it reads the end of its control socket: the training process is gone (its workers end on their own,
when they read the end of theirs). It and its workers ignore SIGINT: Ctrl-C is the training
process's to handle; they follow it.

Example (the training process's side, `process_pool.Launcher`, starts it with):

>>> command(5)[:2] == [sys.executable, "-c"]
True
"""

import errno
import os
import select
import signal
import socket
import struct
import sys
import traceback

from keras_trainx import BATCH_WORKER_VARIABLE
from keras_trainx.extras import require

STATUS = struct.Struct("i")


def command(fd: int) -> list[str]:
    """The command line that runs the launcher on control socket `fd`, with this process's import path."""
    path = [os.path.abspath(entry) if entry else os.getcwd() for entry in sys.path]
    return [sys.executable, "-c", f"import sys; sys.path[:] = {path!r}; "
            f"from keras_trainx.data.process_launcher import serve; serve({fd})"]


def environment() -> dict[str, str]:
    """The launcher's environment: this process's, with `keras_trainx.BATCH_WORKER_VARIABLE` set, so
    that importing `keras_trainx` there (and in its workers) registers nothing and loads no Keras."""
    return {**os.environ, BATCH_WORKER_VARIABLE: "1"}


def _write(fd: int, value: int) -> None:
    try:
        os.write(fd, STATUS.pack(value))
    except OSError:  # the training process let go of this worker's status
        pass


def _fork_worker(control: socket.socket, wakeup: tuple[int, int], worker_fd: int, status_fd: int,
                 statuses: dict[int, int]) -> int:
    """Forks a worker on `worker_fd`; returns its pid (in the launcher)."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        control.close()
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in (*wakeup, status_fd, *statuses.values()):
            os.close(fd)
        from keras_trainx.data import process_worker

        code = process_worker.run(worker_fd)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _reap(statuses: dict[int, int]) -> None:
    """Writes the exit code of every worker that ended to its status pipe."""
    while statuses:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if not pid:
            return
        fd = statuses.pop(pid, None)
        if fd is not None:
            _write(fd, os.waitstatus_to_exitcode(status))
            os.close(fd)


def serve(control_fd: int) -> None:
    """Forks a worker for each request on `control_fd` until the training process is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    require("cv2", "AugmentedSequence")
    require("albumentations", "AugmentedSequence")
    from keras_trainx.data import batches, process_worker  # noqa: F401  (what every worker runs)

    control = socket.socket(fileno=control_fd)
    wakeup = os.pipe()
    os.set_blocking(wakeup[1], False)
    signal.set_wakeup_fd(wakeup[1])
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    statuses: dict[int, int] = {}  # worker pid -> its status pipe
    while True:
        readable, _, _ = select.select([control.fileno(), wakeup[0]], [], [])
        if wakeup[0] in readable:
            os.read(wakeup[0], 4096)
            _reap(statuses)
        if control.fileno() not in readable:
            continue
        try:
            message, fds, _, _ = socket.recv_fds(control, 1, 2)
        except OSError as error:  # out of descriptors: the request's are lost, and it fails
            print(f"keras_trainx worker launcher: {error}", file=sys.stderr)
            continue
        if not message:  # the training process is gone
            return
        if len(fds) != 2:
            print("keras_trainx worker launcher: a request lost its descriptors (open-file limit?)",
                  file=sys.stderr)
            for fd in fds:
                os.close(fd)
            continue
        worker_fd, status_fd = fds
        try:
            pid = _fork_worker(control, wakeup, worker_fd, status_fd, statuses)
        except OSError as error:
            _write(status_fd, -(error.errno or errno.EAGAIN))
            os.close(status_fd)
        else:
            statuses[pid] = status_fd
            _write(status_fd, pid)
        os.close(worker_fd)
        _reap(statuses)
