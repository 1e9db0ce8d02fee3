"""fit_accumulated across two worker processes under MultiWorkerMirroredStrategy, on 127.0.0.1.

Each worker (multiworker_worker.py) gets its own TF_CONFIG, lets `auto_strategy()` choose (it must
pick MultiWorkerMirroredStrategy), trains with fit_accumulated (micro-batches 8, 8, 8 | 3: a partial
window at the end of each epoch) and saves its weights. Both must end with identical weights, equal
to a single-process `Model.fit` on the windows' concatenated samples (batch 24, so 24 | 3).
Every wait is bounded: a worker that fails stops the other, and the whole run has a deadline.
"""

import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np
import pytest

import multiworker_worker as worker
from keras_trainx.distribute import slurm
from keras_trainx.distribute.launch import free_ports
from keras_trainx.distribute import strategy as distribute_strategy

WORKER_SCRIPT = pathlib.Path(worker.__file__)
REPOSITORY = WORKER_SCRIPT.parent.parent
DEADLINE_S = 90


def _worker_environment(cluster, index):
    return _plain_environment(TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))


def _plain_environment(**variables):
    """This process's environment without TPU, cluster or Slurm variables, on the CPU, with `variables`."""
    environment = dict(os.environ)
    for name in ("TF_CONFIG",) + distribute_strategy._TPU_ENVIRONMENT + slurm.SRUN_VARIABLES:
        environment.pop(name, None)
    environment.update(
        CUDA_VISIBLE_DEVICES="-1",
        KERAS_BACKEND="tensorflow",
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")])),
    )
    environment.update(variables)
    return environment


def _run_workers(outputs, environments=None, script=WORKER_SCRIPT, arguments=(), deadline_s=DEADLINE_S):
    """Starts one `script OUTPUT *arguments` per output path; returns their stderr texts. Fails on
    error or after `deadline_s` seconds.

    Worker i runs with `environments[i]`; by default, a TF_CONFIG of all workers on free ports.
    Each worker's stderr goes to a file next to its output (a pipe could fill up and block it).
    """
    if environments is None:
        cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(len(outputs))]}
        environments = [_worker_environment(cluster, index) for index in range(len(outputs))]
    log_paths = [pathlib.Path(output).with_suffix(".log") for output in outputs]
    processes = []
    try:
        for index, (output, log_path) in enumerate(zip(outputs, log_paths)):
            with open(log_path, "w") as log:
                processes.append(
                    subprocess.Popen(
                        [sys.executable, str(script), str(output), *map(str, arguments)],
                        env=environments[index],
                        cwd=REPOSITORY,
                        stdout=subprocess.DEVNULL,
                        stderr=log,
                    )
                )
        deadline = time.monotonic() + deadline_s
        while any(p.poll() is None for p in processes) and time.monotonic() < deadline:
            if any(p.poll() not in (None, 0) for p in processes):
                break  # one failed: the other would wait for it forever
            time.sleep(0.2)
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=30)
    logs = [log_path.read_text() for log_path in log_paths]
    codes = [p.returncode for p in processes]
    if codes != [0] * len(processes):
        report = "\n".join(
            f"--- worker {i} (exit {code}) ---\n{log[-6000:]}" for i, (code, log) in enumerate(zip(codes, logs))
        )
        pytest.fail(f"workers did not finish cleanly within {deadline_s} s:\n{report}")
    return logs


@pytest.fixture(scope="module")
def single_process_reference():
    """Plain Model.fit on the big batch (the windows' concatenated micro-batches), one device."""
    model = worker.build_model()
    x, y = worker.data()
    history = model.fit(
        x, y, batch_size=worker.BATCH_SIZE * worker.ACCUM_STEPS, epochs=worker.EPOCHS,
        shuffle=False, verbose=0,
    )
    return model.get_weights(), history.history["loss"], int(model.optimizer.iterations)


def test_two_workers_match_single_process_big_batch_fit(tmp_path, single_process_reference):
    outputs = [tmp_path / "worker0.npz", tmp_path / "worker1.npz"]
    logs = _run_workers(outputs)
    for log in logs:
        assert (
            "keras_trainx: auto_strategy: MultiWorkerMirroredStrategy with 2 replica(s) "
            "(TF_CONFIG names 2 tasks)"
        ) in log

    reference_weights, reference_loss, reference_iterations = single_process_reference
    assert reference_iterations == 4  # 2 epochs x (24 | 3)
    results = [np.load(output) for output in outputs]
    for result in results:
        # tf.distribute.MultiWorkerMirroredStrategy is the class CollectiveAllReduceStrategy
        assert str(result["strategy_class"]) == "CollectiveAllReduceStrategy"
        assert int(result["replicas"]) == 2
        assert int(result["iterations"]) == reference_iterations
        weights = [result[f"weight_{i}"] for i in range(len(reference_weights))]
        for got, expected in zip(weights, reference_weights):
            np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
        np.testing.assert_allclose(result["loss"], reference_loss, rtol=1e-5)
    for i in range(len(reference_weights)):
        np.testing.assert_array_equal(results[0][f"weight_{i}"], results[1][f"weight_{i}"])
