"""A pytest plugin that runs Keras' own tests with `Model.fit` replaced by `fit_accumulated`.

Loaded into a separate pytest run over Keras' test files (`-p keras_fit_spec_plugin`, see
`test_keras_fit_spec.py`), with the environment variable `KERAS_TRAINX_FIT_MODE`:

- `fit`: nothing replaced; the baseline of what passes with Keras itself.
- `accum1`: every `Model.fit` call is `fit_accumulated(..., accum_steps=1)`.
- `accum2`: on array inputs (numpy or tensors, without `steps_per_epoch`) the batch size is halved
  (Keras' default 32 becomes 16; an odd batch size stays as it is, with `accum_steps=1`) and
  `accum_steps=2`, which exactness makes equal to the test's own big batch; other inputs run with
  `accum_steps=1`.

`fit_accumulated` runs inside the model's own `fit`; that inner call reaches the original `Model.fit`.
"""

import inspect
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

MODE = os.environ.get("KERAS_TRAINX_FIT_MODE", "fit")
MODES = ("fit", "accum1", "accum2")
DEFAULT_BATCH_SIZE = 32


def _is_array_input(x):
    leaves = tf.nest.flatten(x)
    return bool(leaves) and all(isinstance(v, (np.ndarray, tf.Tensor)) for v in leaves)


def _accumulation(arguments):
    """`accum_steps` for this call, halving `arguments["batch_size"]` where that is exact."""
    if MODE != "accum2" or arguments.get("steps_per_epoch") is not None:
        return 1
    if not _is_array_input(arguments.get("x")):
        return 1
    batch_size = arguments.get("batch_size") or DEFAULT_BATCH_SIZE
    if batch_size % 2:
        return 1
    arguments["batch_size"] = batch_size // 2
    if arguments.get("validation_batch_size") is None and arguments.get("validation_data") is not None:
        arguments["validation_batch_size"] = batch_size  # validation keeps the test's batches
    return 2


def pytest_configure(config):
    if MODE not in MODES:
        raise pytest.UsageError(f"KERAS_TRAINX_FIT_MODE must be one of {MODES}; got {MODE!r}")
    config.addinivalue_line("markers", "requires_trainable_backend: Keras' own marker")
    if MODE == "fit":
        return
    import keras_trainx

    original_fit = keras.Model.fit
    signature = inspect.signature(original_fit)
    inside = []

    def fit(self, *args, **kwargs):
        if inside:  # fit_accumulated calling the model's own fit
            return original_fit(self, *args, **kwargs)
        arguments = signature.bind(self, *args, **kwargs).arguments
        arguments.pop("self")
        arguments.update(arguments.pop("kwargs", {}))
        accum_steps = _accumulation(arguments)
        inside.append(True)
        try:
            return keras_trainx.fit_accumulated(self, accum_steps=accum_steps, **arguments)
        finally:
            inside.pop()

    keras.Model.fit = fit
