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


# The test modules whose outcome depends on Keras' internals: the private names of
# keras_trainx/compat.py (the window inside Model.fit, the loss tracker, the data adapter's batch
# count), Model.fit's own loop, and KerasHub models built on them. CI runs these (and Keras' own fit
# tests) against keras-nightly too; the rest use Keras' public API only or none (schedules'
# arithmetic, augmentation, argument tables, the command line, the docs, the notebooks, the type
# check) and run against the Keras release.
KERAS_INTERNALS_MODULES = frozenset({
    "test_accumulation_schedule", "test_data_epochs", "test_data_tf_dataset", "test_data_workers",
    "test_distribute_multiworker", "test_distribute_sharded_input", "test_fit_callbacks",
    "test_fit_distributed", "test_fit_dropin", "test_fit_exactness", "test_fit_inputs",
    "test_fit_loss_contracts", "test_keras_hub", "test_keras_hub_families", "test_planning_lr_range_test",
    "test_planning_micro_batch", "test_planning_noise_scale", "test_saving", "test_sparse_gradients",
})


@pytest.hookimpl(tryfirst=True)  # before the -m selection reads the markers
def pytest_collection_modifyitems(config, items):
    """Marks the tests of `KERAS_INTERNALS_MODULES` with `keras_internals`."""
    for item in items:
        module = getattr(item, "module", None)  # doctest items have none
        if module is not None and module.__name__ in KERAS_INTERNALS_MODULES:
            item.add_marker(pytest.mark.keras_internals)
