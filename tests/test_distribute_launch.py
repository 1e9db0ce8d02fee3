"""keras_trainx.distribute.launch and `keras-trainx launch`: worker processes on 127.0.0.1, each with its
TF_CONFIG, prefixed output, a failure that ends the group, restarts, Ctrl-C and SIGTERM, no orphans.

Most workers here are small Python scripts written into tmp_path (no TensorFlow: they start in a
fraction of a second); the restart-and-resume test runs two TensorFlow workers (launch_resume_worker.py).
Every test has a deadline: past it, this process sends itself Ctrl-C, which `launch` forwards to its
workers before the test fails. Whether a process is gone is read from /proc.
"""

import contextlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

import launch_resume_worker as resume_worker
from keras_trainx import cli
from keras_trainx.distribute import launch as launcher
from keras_trainx.distribute import slurm
from keras_trainx.distribute import strategy as distribute_strategy
from test_distribute_multiworker import REPOSITORY

DEADLINE_S = 60
TENSORFLOW_DEADLINE_S = 400

# Each worker prints its TF_CONFIG on stdout and a line on stderr.
REPORTER = """
import json, os, sys
print(json.dumps(json.loads(os.environ["TF_CONFIG"])))
print("a line on stderr", file=sys.stderr)
"""

# python sleeper.py FOLDER FAILING_INDEX [MARKER]: each worker appends its index to FOLDER/attempts, starts a
# `sleep` child and writes "PID CHILD_PID" to FOLDER/pids<index>; once every worker has written its pids
# (in this attempt or an earlier one), worker FAILING_INDEX exits with status 3 (only while FOLDER/MARKER
# is absent, if MARKER is given: it is created then), the others sleep.
SLEEPER = """
import json, os, pathlib, subprocess, sys, time
config = json.loads(os.environ["TF_CONFIG"])
index, workers = config["task"]["index"], len(config["cluster"]["worker"])
folder, failing = pathlib.Path(sys.argv[1]), int(sys.argv[2])
with open(folder / "attempts", "a") as attempts:
    attempts.write(f"{index}\\n")
child = subprocess.Popen(["sleep", "60"])
(folder / f"pids{index}.tmp").write_text(f"{os.getpid()} {child.pid}")
os.replace(folder / f"pids{index}.tmp", folder / f"pids{index}")
while len(list(folder.glob("pids[0-9]*"))) < workers:
    time.sleep(0.05)
if index == failing:
    marker = folder / sys.argv[3] if len(sys.argv) > 3 else None
    if marker is None or not marker.exists():
        if marker is not None:
            marker.touch()
        sys.exit(3)
time.sleep(60)
"""


@pytest.fixture(autouse=True)
def plain_environment(monkeypatch):
    """Workers inherit this process's environment: no TPU, cluster or Slurm variables, no GPU."""
    for name in ("TF_CONFIG",) + distribute_strategy._TPU_ENVIRONMENT + slurm.SRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")])))


@contextlib.contextmanager
def deadline(seconds):
    """Sends this process Ctrl-C after `seconds`: `launch` stops its workers, and the test fails."""
    timer = threading.Timer(seconds, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        yield
    except KeyboardInterrupt:
        pytest.fail(f"not done within {seconds} s")
    finally:
        timer.cancel()


def _alive(pid):
    """Whether process `pid` exists and is not a zombie, from /proc."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _still_alive(pids, seconds=10.0):
    """The processes of `pids` still alive after up to `seconds` (a killed orphan is reaped by init)."""
    end = time.monotonic() + seconds
    while any(_alive(pid) for pid in pids) and time.monotonic() < end:
        time.sleep(0.05)
    return [pid for pid in pids if _alive(pid)]


def _pids(folder):
    return [int(pid) for path in sorted(folder.glob("pids[0-9]*")) for pid in path.read_text().split()]


def _script(folder, text, name="worker.py"):
    path = folder / name
    path.write_text(text)
    return str(path)


def test_each_worker_gets_its_tf_config_and_its_lines_are_prefixed(tmp_path, capsys):
    with deadline(DEADLINE_S):
        launcher.launch([sys.executable, _script(tmp_path, REPORTER)], workers=3)
    out, err = capsys.readouterr()
    configs = {}
    for line in out.splitlines():
        prefix, config = line.split("] ", 1)
        configs[prefix] = json.loads(config)
    assert sorted(configs) == ["[worker 0", "[worker 1", "[worker 2"]
    addresses = configs["[worker 0"]["cluster"]["worker"]
    assert len(set(addresses)) == 3 and all(address.startswith("127.0.0.1:") for address in addresses)
    for index in range(3):
        assert configs[f"[worker {index}"] == {"cluster": {"worker": addresses},
                                               "task": {"type": "worker", "index": index}}
    assert sorted(err.splitlines()) == [f"[worker {index}] a line on stderr" for index in range(3)]


def test_a_failing_worker_ends_the_group_and_is_named(tmp_path, capsys):
    argv = ["launch", "--workers", "3", _script(tmp_path, SLEEPER), str(tmp_path), "1"]
    with deadline(DEADLINE_S):
        assert cli.main(argv) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == ["keras-trainx launch: error: worker 1 exited with status 3; the other workers were stopped"]
    pids = _pids(tmp_path)
    assert len(pids) == 6  # the workers and their `sleep` children, the failed worker's included
    assert _still_alive(pids) == []


def test_max_restarts_restarts_the_whole_group_once(tmp_path, capsys):
    script = _script(tmp_path, SLEEPER.replace("time.sleep(60)\n", "").replace('["sleep", "60"]', '["true"]'))
    with deadline(DEADLINE_S):
        launcher.launch([sys.executable, script, str(tmp_path), "1", "fail-once"], workers=2, max_restarts=3)
    assert sorted((tmp_path / "attempts").read_text().split()) == ["0", "0", "1", "1"]
    assert capsys.readouterr().err.splitlines() == [
        "launch: worker 1 exited with status 3; restarting all 2 workers (restart 1 of 3)"]


def test_restarts_run_out(tmp_path, capsys):
    script = _script(tmp_path, SLEEPER)
    with deadline(DEADLINE_S), pytest.raises(launcher.WorkerFailed) as failed:
        launcher.launch([sys.executable, script, str(tmp_path), "0"], workers=2, max_restarts=2)
    assert failed.value.failure == launcher.WorkerExit(0, 3) and failed.value.restarts == 2
    assert str(failed.value) == "worker 0 exited with status 3; the other workers were stopped (after 2 restart(s))"
    assert (tmp_path / "attempts").read_text().split().count("0") == 3
    assert len(capsys.readouterr().err.splitlines()) == 2  # one line per restart


def test_a_signal_is_named():
    assert str(launcher.WorkerExit(2, -signal.SIGKILL)) == "worker 2 was killed by SIGKILL"
    assert str(launcher.WorkerExit(0, -(signal.SIGRTMIN + 3))) == f"worker 0 was killed by signal {signal.SIGRTMIN + 3}"


def _when_pids_written(folder, workers, action, seconds=DEADLINE_S):
    """Runs `action` in a thread once `workers` pid files are in `folder`, if that is within `seconds`."""

    def wait_and_act():
        end = time.monotonic() + seconds
        while len(list(folder.glob("pids[0-9]*"))) < workers and time.monotonic() < end:
            time.sleep(0.05)
        if time.monotonic() < end:
            action()

    thread = threading.Thread(target=wait_and_act, daemon=True)
    thread.start()
    return thread


def test_ctrl_c_reaches_every_worker_and_exits_130(tmp_path):
    """Through the console script's code path (`python -m keras_trainx`), as a user's Ctrl-C."""
    command = [sys.executable, "-m", "keras_trainx", "launch", "--workers", "2", _script(tmp_path, SLEEPER),
               str(tmp_path), "-1"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPOSITORY)
    try:
        _when_pids_written(tmp_path, 2, lambda: process.send_signal(signal.SIGINT), TENSORFLOW_DEADLINE_S).join()
        out, err = process.communicate(timeout=30)
    finally:
        process.kill()
        for pid in _pids(tmp_path):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert process.returncode == 130, err[-3000:]
    assert err.splitlines()[-1] == "keras-trainx launch: interrupted"
    assert len(_pids(tmp_path)) == 4 and _still_alive(_pids(tmp_path)) == []


def test_sigterm_ends_every_worker_and_exits_143(tmp_path, capsys):
    argv = ["launch", "--workers", "2", _script(tmp_path, SLEEPER), str(tmp_path), "-1"]
    _when_pids_written(tmp_path, 2, lambda: os.kill(os.getpid(), signal.SIGTERM))
    with deadline(DEADLINE_S):
        assert cli.main(argv) == 143
    assert capsys.readouterr().err == "keras-trainx launch: terminated\n"
    assert len(_pids(tmp_path)) == 4 and _still_alive(_pids(tmp_path)) == []


@pytest.mark.parametrize(
    "make_argv, line",
    [
        (lambda s: ["launch", "--workers", "0", s], "--workers must be an int >= 1; received --workers 0"),
        (lambda s: ["launch", "--workers", "2", "--max-restarts", "-1", s],
         "--max-restarts must be an int >= 0; received --max-restarts -1"),
        (lambda s: ["launch", "--workers", "2", s + ".missing"], "SCRIPT '{s}.missing' is not a file"),
        (lambda s: ["launch", "--workers", "2", str(pathlib.Path(s).parent)], "SCRIPT '{d}' is not a file"),
    ],
    ids=["no-workers", "negative-restarts", "missing-script", "folder-as-script"],
)
def test_bad_arguments_get_one_line_and_status_2(tmp_path, capsys, make_argv, line):
    script = _script(tmp_path, REPORTER)
    assert cli.main(make_argv(script)) == 2
    expected = line.format(s=script, d=tmp_path)
    assert capsys.readouterr() == ("", f"keras-trainx launch: error: {expected}\n")
    assert not (tmp_path / "attempts").exists()


@pytest.mark.parametrize("kwargs, name", [({"workers": 0}, "workers"), ({"workers": 2, "max_restarts": -1},
                                                                          "max_restarts"),
                                          ({"workers": 2, "stop_timeout": 0}, "stop_timeout")])
def test_launch_refuses_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        launcher.launch(["true"], **kwargs)


def test_a_restarted_group_resumes_from_backup_and_restore_to_the_uninterrupted_weights(tmp_path, capsys):
    """Worker 1 dies once in epoch 2 of 3; the group restarts and both workers resume at epoch 2 from
    their BackupAndRestore backups, ending with the weights of one uninterrupted process."""
    command = [sys.executable, str(pathlib.Path(resume_worker.__file__)), str(tmp_path)]
    with deadline(TENSORFLOW_DEADLINE_S):
        launcher.launch(command, workers=2, max_restarts=1)
    out, err = capsys.readouterr()
    assert "launch: worker 1 exited with status 1; restarting all 2 workers (restart 1 of 1)" in err
    assert err.count("keras_trainx: auto_strategy: MultiWorkerMirroredStrategy with 2 replica(s)") == 4
    for index in range(2):
        epochs = [line.split("] ", 1)[1] for line in out.splitlines() if line.startswith(f"[worker {index}] epoch")]
        # first attempt: epochs 0 and 1 (killed in 1); the restart resumes at epoch 1, not 0
        assert epochs == ["epoch 0 begins", "epoch 1 begins", "epoch 1 begins", "epoch 2 begins"]

    reference = resume_worker.train(tf.distribute.get_strategy(), callbacks=[])
    reference_iterations = int(reference.optimizer.iterations.numpy())
    assert reference_iterations == 2 * resume_worker.EPOCHS  # windows 24 | 3 per epoch
    for index in range(2):
        result = np.load(tmp_path / f"worker{index}.npz")
        assert int(result["replicas"]) == 2 and int(result["iterations"]) == reference_iterations
        for i, expected in enumerate(reference.get_weights()):
            np.testing.assert_allclose(result[f"weight_{i}"], expected, rtol=0, atol=1e-6)
