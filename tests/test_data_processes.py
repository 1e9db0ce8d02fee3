"""Worker processes of `to_tf_dataset()` with `use_multiprocessing=True`: lifetime, scripts, batches, faults.

The processes are forks of a launcher process (a child of this one) and end with their dataset, when
the interpreter exits, and when the training process is killed; they load no TensorFlow. A script
runs again in the workers only when it defines a transform: without an `if __name__ == "__main__":`
guard it then fails at once with an error that says to add it. Batches travel in shared-memory slots
that are reused: batches kept by the caller stay intact, for any worker count. Faults (too many
workers, the open-file limit, a worker that dies, a pipeline whose output changes with the draw) end
in errors or warnings that name them.
"""

import gc
import os
import resource
import signal
import subprocess
import sys
import textwrap
import time

import albumentations as A
import numpy as np
import pytest
import tensorflow as tf

from keras_trainx.data import AugmentedSequence, process_launcher, process_pool
from worker_faults import BreakWorker

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = """
import os
import albumentations as A, numpy as np


class Invert(A.ImageOnlyTransform):
    def apply(self, img, **params):
        return 255 - img


{indent}from keras_trainx.data import AugmentedSequence, process_launcher, process_pool
{indent}x = np.random.default_rng(0).integers(0, 256, (16, 8, 8, 3), dtype=np.uint8)
{indent}dataset = AugmentedSequence(x, np.arange(16), batch_size=4, seed=0, workers=2, use_multiprocessing=True,
{indent}                            transform=[{transform}]).to_tf_dataset()
{indent}got = [(int(images.numpy().astype(np.int64).sum()), int(y.numpy().sum())) for images, y in dataset]
{indent}want = int((255 - x if {inverted} else x).astype(np.int64).sum()), sum(range(16))
{indent}print("same" if tuple(map(sum, zip(*got))) == want else f"{{got}} != {{want}}")
{indent}launcher = process_pool.launcher().process.pid
{indent}print(launcher, *[p for p in os.listdir("/proc") if p.isdigit() and
{indent}                  open(f"/proc/{{p}}/stat").read().rsplit(")", 1)[1].split()[1] == str(launcher)], flush=True)
"""


def _parent(pid):
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return None


def launchers():
    """The worker launchers below this process (started by `process_pool.launcher()`)."""
    return {pid for pid in descendants(os.getpid()) if _parent(pid) == os.getpid()
            and "process_launcher" in open(f"/proc/{pid}/cmdline").read()}


def worker_pids():
    """The live worker processes of this process (children of its launcher)."""
    return {pid for launcher in launchers() for pid in descendants(launcher) if not _zombie(pid)}


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


def sequence(**kwargs):
    x = np.random.default_rng(1).integers(0, 256, (16, 8, 8, 3), dtype=np.uint8)
    return AugmentedSequence(x, np.arange(16), batch_size=4, seed=0, workers=2, use_multiprocessing=True,
                             **kwargs)


def test_the_worker_modules_import_no_tensorflow():
    result = subprocess.run(
        [sys.executable, "-c", "import sys, keras_trainx.data.process_launcher, keras_trainx.data.process_worker; "
         "print(sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'keras', 'jax', 'torch'}))"],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env=process_launcher.environment())
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_workers_map_no_tensorflow_library():
    batches = process_pool.ProcessBatches(sequence(transform=[A.HorizontalFlip(p=0.5)], shuffle=False))
    try:
        assert batches.epoch_batch(0, 1)[1].tolist() == [4, 5, 6, 7]
        pids = [worker.pid for worker in batches._workers] + [process_pool.launcher().process.pid]
        assert len(pids) == 3
        for pid in pids:
            with open(f"/proc/{pid}/maps") as maps:
                mapped = maps.read()
            assert "numpy" in mapped and "cv2" in mapped  # what a worker needs is there
            assert "tensorflow" not in mapped and "keras" not in mapped
        with open(f"/proc/{os.getpid()}/maps") as maps:  # the check can see TensorFlow where it is
            assert "tensorflow" in maps.read()
    finally:
        batches.close()


def test_worker_processes_end_with_their_dataset():
    before = worker_pids()
    dataset = sequence().to_tf_dataset()
    assert sum(int(y.numpy().sum()) for _, y in dataset) == sum(range(16))
    workers = worker_pids() - before
    assert len(workers) == 2
    iterator = iter(dataset.map(lambda x, y: y))  # a derived dataset's iterator keeps them alive
    del dataset
    gc.collect()
    assert worker_pids() >= workers
    assert sorted(int(v) for batch in iterator for v in batch.numpy()) == list(range(16))
    del iterator
    gc.collect()
    assert wait_until_gone(workers) == []
    assert worker_pids() - before == set()


def run_script(tmp_path, guarded, transform, inverted=False):
    body = SCRIPT.format(indent="    " if guarded else "", transform=transform, inverted=inverted)
    if guarded:
        body = body.replace("\n    from keras_trainx", '\nif __name__ == "__main__":\n    from keras_trainx', 1)
    path = tmp_path / "train.py"
    path.write_text(textwrap.dedent(body))
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=300, env=env,
                          cwd=tmp_path)


@pytest.mark.parametrize("guarded, transform, inverted", [(True, "Invert(p=1.0)", True),
                                                          (False, "A.HorizontalFlip(p=0.5)", False)],
                         ids=["transform-in-the-script", "library-transform"])
def test_a_script_runs_and_its_workers_end_with_the_interpreter(tmp_path, guarded, transform, inverted):
    """Workers run a (guarded) script that defines a transform; one that does not is never run again in
    them, so it needs no guard."""
    result = run_script(tmp_path, guarded, transform, inverted)
    assert result.returncode == 0, result.stderr[-3000:]
    same, pids = result.stdout.strip().splitlines()[-2:]
    assert same == "same"
    launcher, *workers = [int(pid) for pid in pids.split()]
    assert len(workers) == 2
    assert wait_until_gone([launcher, *workers]) == []


def test_a_script_without_the_main_guard_that_defines_a_transform_fails_at_once_saying_to_add_it(tmp_path):
    result = run_script(tmp_path, False, "Invert(p=1.0)")
    assert result.returncode != 0
    assert 'Put the script\'s work under `if __name__ == "__main__":`' in result.stderr, result.stderr[-3000:]
    assert "RuntimeError: use_multiprocessing=True: " in result.stderr
    assert 'train.py has no `if __name__ == "__main__":` guard, and it defines Invert.' in result.stderr
    # at once: refused in the training process before any worker started (no worker's traceback)
    assert result.stderr.count("Traceback (most recent call last)") == 1


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
        assert len(below) >= 3  # the worker launcher and two workers
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


def test_batches_kept_by_the_caller_stay_intact_for_any_worker_count(monkeypatch):
    # Batches reach TensorFlow as views of shared memory that workers reuse once a batch is let go:
    # keeping every batch of two epochs (more than the batches in flight) must not let any change.
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (48, 8, 8, 3), dtype=np.uint8)
    masks = rng.integers(0, 3, (48, 8, 8), dtype=np.uint8)
    kwargs = dict(y=np.arange(48), masks=masks, sample_weight=np.linspace(0.5, 1.5, 48, dtype=np.float32),
                  batch_size=4, seed=9, drop_remainder=True,
                  transform=[A.HorizontalFlip(p=0.5), A.Affine(rotate=(-20, 20), p=0.7)])
    reference = AugmentedSequence(x, **kwargs)
    monkeypatch.setattr(process_pool, "usable_cores", lambda: 3)  # 3 workers also on fewer cores
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


def images_breaking_batch_2():
    """16 images in batches of 4 (unshuffled); the first image of batch 2 trips `BreakWorker`."""
    x = np.zeros((16, 8, 8, 3), np.uint8)
    x[8, 0, 0, 0] = 255
    return x


@pytest.mark.parametrize("how, ended", [
    ("segfault", "was killed by signal 11 (SIGSEGV: a crash in native code"),
    ("exit0", "exited with status 0 without replying (something it ran called os._exit())"),
    ("sigkill", "was killed by signal 9 (SIGKILL: the system's out-of-memory killer sends it"),
])
def test_a_worker_that_dies_fails_its_batches_naming_it_and_how_it_ended(how, ended):
    transform = [BreakWorker("exit0" if how == "sigkill" else how)]
    x = images_breaking_batch_2() if how != "sigkill" else np.zeros((16, 8, 8, 3), np.uint8)
    batches = process_pool.ProcessBatches(AugmentedSequence(
        x, np.arange(16), batch_size=4, seed=0, shuffle=False, workers=2, use_multiprocessing=True,
        transform=transform))
    try:
        assert batches.epoch_batch(0, 0)[1].tolist() == [0, 1, 2, 3]
        builder = batches._workers[2 % 2]  # the workers take the batches of a pass in turn
        if how == "sigkill":  # what the out-of-memory killer does
            os.kill(builder.pid, signal.SIGKILL)
        assert batches.epoch_batch(0, 1)[1].tolist() == [4, 5, 6, 7]  # the other worker goes on
        with pytest.raises(RuntimeError) as raised:  # batch 2, or a later one of the dead worker's
            for index in range(2, 16):
                batches.epoch_batch(0, index)
        message = str(raised.value)
        assert message.startswith(f"worker process {builder.pid} of use_multiprocessing=True {ended}")
        assert message.endswith("; the dataset cannot go on without it.")
        assert "__main__" not in message
        # and so do its later batches: those of epoch 3, none of which it can have built before it died
        # (the read-ahead had asked it for batches of epoch 1 at most)
        with pytest.raises(RuntimeError, match=f"worker process {builder.pid} "):
            for index in range(4):
                batches.epoch_batch(3, index)
    finally:
        batches.close()


def test_workers_beyond_the_usable_cores_are_not_started_and_a_warning_says_so(monkeypatch):
    monkeypatch.setattr(process_pool, "usable_cores", lambda: 2)
    before = worker_pids()
    with pytest.warns(UserWarning) as caught:
        batches = process_pool.ProcessBatches(AugmentedSequence(
            np.zeros((16, 8, 8, 3), np.uint8), np.arange(16), batch_size=4, seed=0, workers=1000,
            use_multiprocessing=True))
    try:
        assert [str(w.message) for w in caught] == [
            "use_multiprocessing=True with workers=1000, but this process may use 2 cores: starting 2 worker "
            "processes (more would add only memory and start-up time; the batches are the same for any number)."]
        assert len(worker_pids() - before) == 2
        assert batches.epoch_batch(0, 3)[1].tolist() == list(np.arange(16)[batches.sequence.batch_indices(3, 0)])
    finally:
        batches.close()


def test_hitting_the_open_file_limit_stops_the_workers_that_started_and_says_so(monkeypatch):
    monkeypatch.setattr(process_pool, "usable_cores", lambda: 64)
    launcher = process_pool.launcher()  # started before the limit is lowered: the parent runs out first
    started_before = set(descendants(launcher.process.pid))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    headroom = 9  # a worker holds 2 descriptors here, and 2 more while it starts
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + headroom, hard))
    try:
        with pytest.raises(OSError) as raised:
            process_pool.ProcessBatches(AugmentedSequence(
                np.zeros((16, 8, 8, 3), np.uint8), np.arange(16), batch_size=4, seed=0, workers=16,
                use_multiprocessing=True))
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    message = str(raised.value)
    assert raised.value.errno == 24
    assert "use_multiprocessing=True started " in message and " of 16 worker processes, then failed: " in message
    assert (f"This process may open {limit} files (`ulimit -n`), and each worker holds 2 of them (plus one per "
            "shared-memory batch slot): raise the limit or lower workers. The workers that had started are "
            "stopped.") in message
    assert int(message.split("started ")[1].split(" of")[0]) >= 1
    assert wait_until_gone(set(descendants(launcher.process.pid)) - started_before) == []
    assert launcher.process.poll() is None  # the launcher serves on


@pytest.mark.parametrize("transform, name", [(A.ToFloat(p=0.5), "ToFloat"),
                                             (A.RandomCrop(4, 4, p=0.5), "RandomCrop")])
@pytest.mark.parametrize("where", ["one batch", "two batches", "worker"])
def test_a_pipeline_whose_output_changes_with_the_draw_is_named(transform, name, where):
    x = np.random.default_rng(5).integers(0, 256, (16, 8, 8, 3), dtype=np.uint8)
    batch_size = 1 if where == "two batches" else 8
    seq = AugmentedSequence(x, batch_size=batch_size, seed=3, transform=[transform],
                            workers=2 if where == "worker" else 1, use_multiprocessing=where == "worker")
    expected = (f"{name} applied to one of them only (a random draw): a transform that changes the dtype or "
                "the size must apply to every image (p=1), or the pipeline must end with one that fixes them")
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError), match=expected.replace("(", r"\(")
                       .replace(")", r"\)")) as raised:
        for _ in seq.to_tf_dataset():
            pass
    text = str(raised.value)
    if where == "two batches":
        assert "differs from the first batch in array 0 of its structure" in text
    else:
        assert "comes out of the pipeline as " in text and "the batch's first image as " in text


def slot_mappings():
    """The shared-memory batch slots mapped in this process, by inode, from /proc/self/maps."""
    with open("/proc/self/maps") as maps:
        return {line.split()[4] for line in maps if "keras_trainx-batch" in line}


def test_a_batch_kept_after_its_dataset_keeps_only_its_own_slot_mapped():
    before = slot_mappings()  # batches other tests keep
    x = np.random.default_rng(6).integers(0, 256, (64, 8, 8, 3), dtype=np.uint8)
    dataset = AugmentedSequence(x, np.arange(64), batch_size=4, seed=0, workers=2,
                                use_multiprocessing=True).to_tf_dataset(prefetch=2)
    kept = None
    for images, labels in dataset:
        kept = images if kept is None else kept
    assert len(slot_mappings() - before) > 1
    del dataset, images, labels
    gc.collect()
    assert len(slot_mappings() - before) == 1
    del kept
    gc.collect()
    assert slot_mappings() - before == set()


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


class _ReversedBatches(AugmentedSequence):
    """Builds its batches itself, which worker processes would not run."""

    def build_batch(self, epoch, index, empty):
        images, *rest = super().build_batch(epoch, index, empty)
        return (images[::-1], *rest)


def test_a_subclass_that_builds_its_own_batches_is_refused_for_process_workers():
    images = np.zeros((4, 8, 8, 3), np.uint8)
    threads = _ReversedBatches(images, batch_size=2, seed=0, workers=2)
    assert next(iter(threads.to_tf_dataset()))[0].shape == (2, 8, 8, 3)  # threads run the override
    processes = _ReversedBatches(images, batch_size=2, seed=0, workers=2, use_multiprocessing=True)
    with pytest.raises(TypeError, match=r"^_ReversedBatches overrides build_batch, which use_multiprocessing=True "
                                        r"worker processes do not run: .* Use thread workers"):
        processes.to_tf_dataset()
