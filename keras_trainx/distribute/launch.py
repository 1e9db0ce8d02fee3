"""Runs a training command as a group of worker processes on this machine, each with its `TF_CONFIG`.

`launch(command, workers=N)` is what `keras-trainx launch --workers N SCRIPT` runs: the
`torchrun --standalone` of `tf.distribute` on one host. It picks N free ports on 127.0.0.1, starts N
copies of `command`, each with `TF_CONFIG` naming all N as `"worker"` tasks and itself as worker i
(so `auto_strategy()` builds a `MultiWorkerMirroredStrategy` in each), and prefixes each line the
workers print with `[worker i] ` (stdout to stdout, stderr to stderr).

When one worker fails, the others are ended at once (SIGTERM, SIGKILL `stop_timeout` seconds later)
instead of waiting for TensorFlow's collective health checks; with `max_restarts` R the whole group
then starts again on fresh ports, up to R times, so that a script with
`keras.callbacks.BackupAndRestore` resumes from its last backup. Ctrl-C (KeyboardInterrupt) is
forwarded to every worker as SIGINT, and the workers still running `stop_timeout` seconds later are
killed. Each worker runs in a session of its own, and everything it started is killed with the group:
no process outlives `launch`.
"""

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import IO

HOST = "127.0.0.1"
_POLL_S = 0.05
_DRAIN_S = 5.0


@dataclasses.dataclass(frozen=True)
class WorkerExit:
    """How a worker process ended.

    Args:
        index: the worker's index in `TF_CONFIG` (0 is the chief).
        status: its exit status; negative: the number of the signal that ended it.
    """

    index: int
    status: int

    def __str__(self) -> str:
        """`"worker 1 exited with status 3"` or `"worker 1 was killed by SIGKILL"`."""
        if self.status < 0:
            try:
                name = signal.Signals(-self.status).name
            except ValueError:  # a real-time signal: no name
                name = f"signal {-self.status}"
            return f"worker {self.index} was killed by {name}"
        return f"worker {self.index} exited with status {self.status}"


class WorkerFailed(RuntimeError):
    """A worker failed and no restart was left; the other workers were ended.

    Args:
        failure: the worker that failed first, and how.
        restarts: how many times the group had been restarted before.
    """

    def __init__(self, failure: WorkerExit, restarts: int) -> None:
        super().__init__(f"{failure}; the other workers were stopped"
                         + (f" (after {restarts} restart(s))" if restarts else ""))
        self.failure = failure
        self.restarts = restarts


def launch(command: Sequence[str], workers: int, *, max_restarts: int = 0, stop_timeout: float = 5.0) -> None:
    """Runs `command` as `workers` processes with `TF_CONFIG` until all end, restarting the group on failure.

    See the module docstring for what each worker gets and how the group ends.

    Args:
        command: the program and its arguments, e.g. `[sys.executable, "train.py", "--epochs", "3"]`.
        workers: the number of worker processes (>= 1).
        max_restarts: how many times the whole group may be restarted after a worker fails (>= 0).
        stop_timeout: seconds (> 0) a worker has to end after SIGTERM or a forwarded SIGINT before
            it is killed.

    Raises:
        WorkerFailed: a worker failed after `max_restarts` restarts.
        KeyboardInterrupt: after forwarding it to the workers and seeing them all end.

    Example:

    >>> import sys
    >>> from keras_trainx.distribute.launch import launch
    >>> launch([sys.executable, "-c", "import json, os; print(len(json.loads(os.environ['TF_CONFIG'])"
    ...         "['cluster']['worker']))"], workers=1)
    [worker 0] 1
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"`workers` must be an int >= 1; received workers={workers!r}.")
    if isinstance(max_restarts, bool) or not isinstance(max_restarts, int) or max_restarts < 0:
        raise ValueError(f"`max_restarts` must be an int >= 0; received max_restarts={max_restarts!r}.")
    if not stop_timeout > 0:
        raise ValueError(f"`stop_timeout` must be > 0 seconds; received stop_timeout={stop_timeout!r}.")
    for restart in range(max_restarts + 1):
        failure = _run_group(list(command), workers, stop_timeout)
        if failure is None:
            return
        if restart == max_restarts:
            raise WorkerFailed(failure, restart)
        print(f"launch: {failure}; restarting all {workers} workers (restart {restart + 1} of {max_restarts})",
              file=sys.stderr, flush=True)


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports on 127.0.0.1 that were free a moment ago (the OS picks them).

    Args:
        count: how many ports.

    Returns:
        The port numbers.

    Example:

    >>> from keras_trainx.distribute.launch import free_ports
    >>> len(set(free_ports(3)))
    3
    """
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind((HOST, 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def worker_environment(addresses: Sequence[str], index: int) -> dict[str, str]:
    """The environment of worker `index` of a cluster of `addresses`: this process's, with `TF_CONFIG`
    set and Python's output unbuffered (so that lines come through as they are printed).

    Args:
        addresses: every worker's `host:port`, in index order.
        index: this worker's index.

    Returns:
        A new environment dictionary.

    Example:

    >>> from keras_trainx.distribute.launch import worker_environment
    >>> worker_environment(["127.0.0.1:2222", "127.0.0.1:2223"], 1)["TF_CONFIG"]
    '{"cluster": {"worker": ["127.0.0.1:2222", "127.0.0.1:2223"]}, "task": {"type": "worker", "index": 1}}'
    """
    tf_config = {"cluster": {"worker": list(addresses)}, "task": {"type": "worker", "index": index}}
    return {**os.environ, "TF_CONFIG": json.dumps(tf_config), "PYTHONUNBUFFERED": "1"}


class _Worker:
    """One worker process, in a session of its own, with a thread per output stream that prefixes lines."""

    def __init__(self, command: list[str], addresses: list[str], index: int, lock: threading.Lock) -> None:
        self.index = index
        self.process = subprocess.Popen(command, env=worker_environment(addresses, index), stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        assert self.process.stdout is not None and self.process.stderr is not None
        self.readers = [
            threading.Thread(target=_copy_lines, args=(stream, target, f"[worker {index}] ", lock), daemon=True)
            for stream, target in ((self.process.stdout, sys.stdout), (self.process.stderr, sys.stderr))
        ]
        for reader in self.readers:
            reader.start()

    def signal_group(self, signum: int) -> None:
        """Sends `signum` to every process of the worker's session (the worker and what it started)."""
        try:
            os.killpg(self.process.pid, signum)
        except ProcessLookupError:  # the session has no process left
            pass


def _copy_lines(stream: IO[bytes], target: IO[str], prefix: str, lock: threading.Lock) -> None:
    for line in iter(stream.readline, b""):
        with lock:
            target.write(prefix + line.decode("utf-8", "replace").rstrip("\r\n") + "\n")
            target.flush()
    stream.close()


def _run_group(command: list[str], workers: int, stop_timeout: float) -> WorkerExit | None:
    """Runs one attempt; returns the first worker that failed, or None when all exited with status 0."""
    addresses = [f"{HOST}:{port}" for port in free_ports(workers)]
    lock = threading.Lock()
    group: list[_Worker] = []
    stop_signal = signal.SIGTERM
    try:
        for index in range(workers):
            group.append(_Worker(command, addresses, index, lock))
        while True:
            statuses = [worker.process.poll() for worker in group]
            failed = [WorkerExit(w.index, s) for w, s in zip(group, statuses) if s not in (None, 0)]
            if failed:
                return failed[0]
            if all(status == 0 for status in statuses):
                return None
            time.sleep(_POLL_S)
    except KeyboardInterrupt:
        stop_signal = signal.SIGINT  # forwarded: each worker gets the Ctrl-C
        raise
    finally:
        _stop(group, stop_signal, stop_timeout)


def _stop(group: list[_Worker], signum: int, stop_timeout: float) -> None:
    """Sends `signum` to the workers still running, kills them `stop_timeout` seconds later, then kills
    whatever each worker left behind, and waits for the output to be copied."""
    pending: BaseException | None = None
    try:
        for worker in group:
            if worker.process.poll() is None:
                worker.signal_group(signum)
        deadline = time.monotonic() + stop_timeout
        while any(worker.process.poll() is None for worker in group) and time.monotonic() < deadline:
            time.sleep(_POLL_S)
    except BaseException as error:  # Ctrl-C or SIGTERM again while waiting: kill at once, then raise it
        pending = error
    for worker in group:
        worker.signal_group(signal.SIGKILL)
        worker.process.wait()
    for worker in group:
        for reader in worker.readers:
            reader.join(_DRAIN_S)
    if pending is not None:
        raise pending
