"""Worker processes of `to_tf_dataset()` with `use_multiprocessing=True`: lifetime, scripts, batches.

The processes end with their dataset (counted with `multiprocessing.active_children()`), when the
interpreter exits, and when the training process is killed; a script without an
`if __name__ == "__main__":` guard fails at once with an error that says to add it. Batches travel in
shared-memory slots that are reused: batches kept by the caller stay intact, for any worker count.
"""

import gc
import multiprocessing
import os
import subprocess
import sys
import textwrap
import time

import albumentations as A
import numpy as np
import pytest

from keras_trainx.data import AugmentedSequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = """
import multiprocessing, sys
import albumentations as A, numpy as np
from keras_trainx.data import AugmentedSequence

{indent}x = np.random.default_rng(0).integers(0, 256, (16, 8, 8, 3), dtype=np.uint8)
{indent}dataset = AugmentedSequence(x, np.arange(16), batch_size=4, seed=0, workers=2, use_multiprocessing=True,
{indent}                            transform=[A.HorizontalFlip(p=0.5)]).to_tf_dataset()
{indent}print(sum(int(y.numpy().sum()) for _, y in dataset))
{indent}print(" ".join(str(p.pid) for p in multiprocessing.active_children()), flush=True)
"""


def children(settle=0.0):
    time.sleep(settle)
    return {p.pid for p in multiprocessing.active_children()}


def wait_until_gone(pids, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [pid for pid in pids if os.path.exists(f"/proc/{pid}") and not _zombie(pid)]
        if not alive:
            return []
        time.sleep(0.2)
    return alive


def _zombie(pid):
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def sequence():
    x = np.random.default_rng(1).integers(0, 256, (16, 8, 8, 3), dtype=np.uint8)
    return AugmentedSequence(x, np.arange(16), batch_size=4, seed=0, workers=2, use_multiprocessing=True)


def test_worker_processes_end_with_their_dataset():
    before = children(settle=1.0)
    dataset = sequence().to_tf_dataset()
    assert sum(int(y.numpy().sum()) for _, y in dataset) == sum(range(16))
    workers = children() - before
    assert len(workers) == 2
    iterator = iter(dataset.map(lambda x, y: y))  # a derived dataset's iterator keeps them alive
    del dataset
    gc.collect()
    assert children() >= workers
    assert sorted(int(v) for batch in iterator for v in batch.numpy()) == list(range(16))
    del iterator
    gc.collect()
    assert wait_until_gone(workers) == []
    assert children() - before == set()


def run_script(guarded, tmp_path):
    body = SCRIPT.format(indent="    " if guarded else "")
    if guarded:
        body = body.replace("\n    x = ", '\nif __name__ == "__main__":\n    x = ', 1)
    path = tmp_path / "train.py"
    path.write_text(textwrap.dedent(body))
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=300, env=env,
                          cwd=tmp_path)


def test_a_guarded_script_runs_and_its_workers_end_with_the_interpreter(tmp_path):
    result = run_script(True, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    total, pids = result.stdout.strip().splitlines()[-2:]
    assert int(total) == sum(range(16))
    workers = [int(pid) for pid in pids.split()]
    assert len(workers) == 2
    assert wait_until_gone(workers) == []


def test_a_script_without_the_main_guard_fails_at_once_saying_to_add_it(tmp_path):
    result = run_script(False, tmp_path)
    assert result.returncode != 0
    assert 'Put the script\'s work under `if __name__ == "__main__":`' in result.stderr, result.stderr[-3000:]
    assert "RuntimeError: use_multiprocessing=True: " in result.stderr
    assert 'train.py has no `if __name__ == "__main__":` guard' in result.stderr
    # at once: refused in the training process before any worker started (no worker's traceback)
    assert result.stderr.count("Traceback (most recent call last)") == 1
    assert "BrokenProcessPool" not in result.stderr


KILLED_SCRIPT = """
import time
import numpy as np
from keras_trainx.data import AugmentedSequence

if __name__ == "__main__":
    x = np.zeros((64, 8, 8, 3), np.uint8)
    dataset = AugmentedSequence(x, np.arange(64), batch_size=4, seed=0, workers=2,
                                use_multiprocessing=True).to_tf_dataset()
    next(iter(dataset))
    print("serving", flush=True)
    time.sleep(600)
"""


def descendants(pid):
    """Every live process below `pid` (children, grandchildren, ...), from /proc."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(parent, []).append(int(entry))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def test_workers_end_when_the_training_process_is_killed(tmp_path):
    path = tmp_path / "train.py"
    path.write_text(KILLED_SCRIPT)
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    process = subprocess.Popen([sys.executable, str(path)], stdout=subprocess.PIPE, text=True, env=env,
                               cwd=tmp_path)
    left = []
    try:
        assert process.stdout.readline().strip() == "serving"
        below = descendants(process.pid)
        assert len(below) >= 3  # the fork server and two workers (and Python's resource tracker)
        process.kill()  # SIGKILL: no atexit, no finalizer runs in the training process
        process.wait(timeout=30)
        left = wait_until_gone(below, timeout=10)
        assert left == []
    finally:
        process.kill()
        for pid in left:
            os.kill(pid, 9)


def batches_of(dataset):
    """All batches of one pass, kept as TensorFlow holds them (no copy into NumPy until compared)."""
    return [batch for batch in dataset]


def assert_same_structure_and_values(got, want):
    if isinstance(want, dict):
        assert sorted(got) == sorted(want)
        for key in want:
            assert_same_structure_and_values(got[key], want[key])
    elif isinstance(want, tuple):
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert_same_structure_and_values(g, w)
    else:
        np.testing.assert_array_equal(np.asarray(got), want)


def test_batches_kept_by_the_caller_stay_intact_for_any_worker_count():
    # Batches reach TensorFlow as views of shared memory that workers reuse once a batch is let go:
    # keeping every batch of two epochs (more than the batches in flight) must not let any change.
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (48, 8, 8, 3), dtype=np.uint8)
    masks = rng.integers(0, 3, (48, 8, 8), dtype=np.uint8)
    kwargs = dict(y=np.arange(48), masks=masks, sample_weight=np.linspace(0.5, 1.5, 48, dtype=np.float32),
                  batch_size=4, seed=9, drop_remainder=True,
                  transform=[A.HorizontalFlip(p=0.5), A.Affine(rotate=(-20, 20), p=0.7)])
    reference = AugmentedSequence(x, **kwargs)
    for workers in (1, 3):
        dataset = AugmentedSequence(x, workers=workers, use_multiprocessing=True, **kwargs).to_tf_dataset()
        epochs = [batches_of(dataset), batches_of(dataset)]
        for epoch, got in enumerate(epochs):
            assert len(got) == 12
            for index, batch in enumerate(got):
                assert_same_structure_and_values(batch, reference.epoch_batch(epoch, index))
        del dataset, epochs
        gc.collect()


def memory_files():
    """The shared-memory files (memfd) of batch slots open in this process (each name once)."""
    names = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            names.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            continue
    return sorted({name for name in names if "keras_trainx-batch" in name})


def test_shared_memory_slots_are_reused_and_released_with_the_dataset():
    assert memory_files() == []
    x = np.random.default_rng(4).integers(0, 256, (96, 8, 8, 3), dtype=np.uint8)
    dataset = AugmentedSequence(x, np.arange(96), batch_size=4, seed=0, workers=2, use_multiprocessing=True,
                                transform=[A.HorizontalFlip(p=0.5)]).to_tf_dataset(prefetch=2)
    for _ in range(3):
        assert sum(int(y.numpy().sum()) for _, y in dataset) == sum(range(96))
    # 72 batches went through slots that are reused once TensorFlow lets go of a batch: about one slot
    # per batch requested ahead (4), requested by tf.data (4), prefetched (2) or being read, and those
    # TensorFlow lets go of late (it releases a numpy_function's arrays at its next call)
    assert 1 <= len(memory_files()) <= 20
    del dataset
    gc.collect()
    assert memory_files() == []


def test_a_worker_error_reaches_the_caller_with_its_type_and_traceback(tmp_path):
    import cv2

    from keras_trainx.data.process_pool import ProcessBatches

    paths = []
    for i in range(4):
        paths.append(str(tmp_path / f"{i}.png"))
        cv2.imwrite(paths[-1], np.full((8, 8, 3), i, np.uint8))
    batches = ProcessBatches(AugmentedSequence(paths, batch_size=2, seed=0, workers=2, shuffle=False,
                                               use_multiprocessing=True))
    try:
        assert batches.epoch_batch(0, 1)[0][:, 0, 0, 0].tolist() == [2, 3]
        with open(paths[3], "w") as file:
            file.write("not an image")
        with pytest.raises(ValueError, match=r"OpenCV cannot read file .*3\.png") as raised:
            batches.epoch_batch(0, 1)
        assert "Raised in a worker process of use_multiprocessing=True" in "".join(raised.value.__notes__)
        assert batches.epoch_batch(0, 0)[0][:, 0, 0, 0].tolist() == [0, 1]  # the workers go on
    finally:
        batches.close()


def test_a_worker_that_dies_fails_its_batch_saying_so():
    from keras_trainx.data.process_pool import ProcessBatches

    batches = ProcessBatches(sequence())
    try:
        for worker in multiprocessing.active_children():
            if worker.name == "keras_trainx batch worker":
                worker.kill()
                worker.join()
        with pytest.raises(RuntimeError, match="worker processes of use_multiprocessing=True ended"):
            batches.epoch_batch(0, 0)
    finally:
        batches.close()


def test_batches_are_requested_ahead_in_turn_once_each_and_again_after_a_jump_back():
    """Asking for a batch sends the 4 (2 x workers) that follow, past the end of a pass into the next
    epoch, each once, to the workers in turn; a pass that starts elsewhere reads ahead from there."""
    from keras_trainx.data.process_pool import ProcessBatches

    x = np.random.default_rng(1).integers(0, 256, (48, 8, 8, 3), dtype=np.uint8)
    batches = ProcessBatches(AugmentedSequence(x, np.arange(48), batch_size=4, seed=0, workers=2,
                                               use_multiprocessing=True))
    sent = []
    for worker_number, worker in enumerate(batches._workers):
        real = worker.request
        worker.request = lambda epoch, index, slot, real=real, w=worker_number: (
            sent.append((w, epoch, index)) or real(epoch, index, slot))
    n = len(batches)  # 12
    try:
        batches.epoch_batch(0, 0)
        assert sent == [(0, 0, 0), (1, 0, 1), (0, 0, 2), (1, 0, 3), (0, 0, 4)]
        sent.clear()
        for index in (2, 1, 3):  # tf.data's parallel calls ask out of order
            batches.epoch_batch(0, index)
        assert sent == [(1, 0, 5), (0, 0, 6), (1, 0, 7)]
        for index in range(4, n):
            batches.epoch_batch(0, index)
        sent.clear()
        batches.epoch_batch(1, 0)  # built ahead at the end of epoch 0
        assert sent == [((n + 4) % 2, 1, 4)]
        sent.clear()
        batches.epoch_batch(0, 0)  # a resume: epoch 0 again
        assert sent == [(0, 0, 0), (1, 0, 1), (0, 0, 2), (1, 0, 3), (0, 0, 4)]
    finally:
        batches.close()
