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
