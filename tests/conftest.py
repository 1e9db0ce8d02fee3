"""Test session set-up: quiet TensorFlow, two logical CPU devices for tf.distribute tests.

The logical-device split must happen before TensorFlow runs any op, so it lives here, at import time
of the test session. Single-device tests are unaffected: Keras places everything on /cpu:0.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MPLBACKEND", "Agg")

import tensorflow as tf  # noqa: E402

_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    _cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_collective_keys():
    """Gives the MirroredStrategy objects of each test their own collective-key range.

    TensorFlow numbers the collective ops of every MirroredStrategy from the same keys (group 1,
    instance 100), so a second strategy in one process whose first all-reduce has other shapes fails
    with "Shape mismatch in the collective instance 100". A training process holds one strategy; this
    test session holds many, one or more per test.
    """
    tf.distribute.MirroredStrategy._collective_key_base += 1000
    yield
