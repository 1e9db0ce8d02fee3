"""The main job, `keras-trainx demo`, end to end in a fresh process (offline digits data)."""

import os
import re
import signal
import subprocess
import sys
import time

from keras_trainx import cli


def test_demo_trains_saves_and_reloads(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, "-m", "keras_trainx", "demo", "--epochs", "3", "--output-dir",
         str(tmp_path), "--verbose", "0"],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    # 1,437 training digits in micro-batches of 32: 45 micro-batches, 12 updates per epoch.
    assert "micro-batch 32 x 4 accumulation steps = effective batch 128" in out
    assert "effective batch: 128; optimizer updates: 36;" in out
    accuracy = float(re.search(r"test accuracy: ([0-9.]+)", out).group(1))
    assert accuracy > 0.8
    assert "identical predictions: True" in out
    assert (tmp_path / "digits_mish.keras").is_file()


def test_one_update_in_all_trains_without_a_warmup(tmp_path, capsys):
    """45 micro-batches, accum_steps=64: one (short-window) update; no warm-up, the peak rate."""
    status = cli.main(["demo", "--epochs", "1", "--accum-steps", "64", "--output-dir", str(tmp_path),
                       "--verbose", "0"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "effective batch 2048, 1 updates (0 warm-up)" in out
    assert "effective batch: 2048; optimizer updates: 1;" in out
    assert (tmp_path / "digits_mish.keras").is_file()


def test_ctrl_c_during_the_demo_is_one_line_status_130_and_nothing_written(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
    out_dir = tmp_path / "models"
    demo = subprocess.Popen(
        [sys.executable, "-m", "keras_trainx", "demo", "--epochs", "50", "--output-dir", str(out_dir),
         "--verbose", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        assert demo.stdout.readline().startswith("keras_trainx demo: 1437 training digits")  # training starts
        time.sleep(2)
        demo.send_signal(signal.SIGINT)
        _, stderr = demo.communicate(timeout=120)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    assert demo.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    assert stderr.splitlines()[-1] == "keras-trainx demo: interrupted"
    assert not out_dir.exists()


def test_an_interrupted_save_leaves_no_half_written_model(tmp_path, monkeypatch):
    """The model is written to a temporary name and renamed when complete."""
    import keras

    from keras_trainx import demo

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    original = keras.Model.save

    def interrupted(self, filepath, *args, **kwargs):
        original(self, filepath, *args, **kwargs)
        with open(filepath, "r+b") as f:
            f.truncate(100)  # as if the interrupt came halfway through the write
        raise KeyboardInterrupt

    monkeypatch.setattr(keras.Model, "save", interrupted)
    try:
        demo.save_model(model, str(tmp_path / "m.keras"))
    except KeyboardInterrupt:
        pass
    else:
        raise AssertionError("the interrupt was swallowed")
    assert list(tmp_path.iterdir()) == []


SWALLOWED_INTERRUPT = """
import sys, time
from keras_trainx import cli
cli.INTERRUPT_GRACE_SECONDS = 1.0

def run(args):  # loses every KeyboardInterrupt, as Python code that TensorFlow calls back can
    print("started", flush=True)
    for _ in range(600):
        try:
            time.sleep(0.1)
        except KeyboardInterrupt:
            pass
    return 0

cli.demo.run = run
sys.argv = ["keras-trainx", "demo"]
cli.entry_point()
"""


def test_ctrl_c_ends_the_command_even_when_the_interrupt_is_lost():
    demo = subprocess.Popen([sys.executable, "-c", SWALLOWED_INTERRUPT], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert demo.stdout.readline() == "started\n"
        demo.send_signal(signal.SIGINT)
        _, stderr = demo.communicate(timeout=30)  # without the deadline it runs 60 s
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    assert demo.returncode == 130, stderr[-3000:]
    assert stderr.splitlines()[-1] == "keras-trainx demo: interrupted"
