"""Worker processes of `to_tf_dataset()` with `use_multiprocessing=True`: their lifetime and scripts.

The processes end with their dataset (counted with `multiprocessing.active_children()`) and when the
interpreter exits; a script without an `if __name__ == "__main__":` guard fails at once with an error
that says to add it, instead of a bare `BrokenProcessPool`.
"""

import gc
import multiprocessing
import os
import subprocess
import sys
import textwrap
import time

import numpy as np

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
    assert 1 <= len(workers) <= 2  # concurrent.futures starts them on demand
    iterator = iter(dataset.map(lambda x, y: y))  # a derived dataset's iterator keeps them alive
    del dataset
    gc.collect()
    assert children() >= workers
    assert sorted(int(v) for batch in iterator for v in batch.numpy()) == list(range(16))
    workers |= children() - before  # the pool may start its second worker only now
    assert len(workers) <= 2
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
    assert workers  # started on demand: one or two
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
