"""The main job, `keras-trainx demo`, end to end in a fresh process (offline digits data)."""

import os
import re
import subprocess
import sys


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
