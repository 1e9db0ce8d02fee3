"""fit_accumulated under MirroredStrategy (two logical CPUs, see conftest.py) and mixed precision."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_trainx
from accumulation_helpers import max_weight_difference, regression_data, regression_model
from keras_trainx.all_reduce_counter import AllReduceCounter

DEVICES = ["/cpu:0", "/cpu:1"]


def _mirrored(cross_device_ops=None):
    return tf.distribute.MirroredStrategy(DEVICES, cross_device_ops=cross_device_ops)


@pytest.mark.parametrize("micro, accum_steps", [(8, 3), (6, 2)], ids=["8x3", "6x2"])
def test_mirrored_matches_single_device_big_batch(micro, accum_steps):
    # 27 samples. 8x3: windows 8+8+8 and a partial window of one micro-batch of 3, split 2/1 across
    # the replicas. 6x2: windows 6+6, 6+6 and 3, the last micro-batch again split unevenly.
    x, y, weights = regression_data()
    reference = regression_model(keras.optimizers.Adam(0.01))
    expected = reference.fit(x, y, sample_weight=weights, batch_size=micro * accum_steps, epochs=2,
                             shuffle=False, verbose=0)
    with _mirrored().scope():
        accumulated = regression_model(keras.optimizers.Adam(0.01))
    history = keras_trainx.fit_accumulated(
        accumulated, x, y, sample_weight=weights, batch_size=micro, accum_steps=accum_steps,
        epochs=2, shuffle=False, verbose=0,
    )
    assert max_weight_difference(reference, accumulated) < 1e-5
    assert accumulated.optimizer.iterations.numpy() == reference.optimizer.iterations.numpy()
    for name in ("loss", "mae"):
        np.testing.assert_allclose(history.history[name], expected.history[name], rtol=1e-5)


def test_mirrored_added_losses_match_single_device_big_batch():
    # Each replica's activity regularizer is a mean over its share and its hand-written add_loss a
    # sum over it: summed over replicas and micro-steps, each equals the single-device big batch's.
    from test_fit_loss_contracts import _data, _penalized_model

    x, y, _ = _data()
    reference = _penalized_model(keras.optimizers.SGD(0.1))
    reference.fit(x, y, batch_size=24, epochs=2, shuffle=False, verbose=0)
    with _mirrored().scope():
        accumulated = _penalized_model(keras.optimizers.SGD(0.1))
    keras_trainx.fit_accumulated(accumulated, x, y, batch_size=8, accum_steps=3, epochs=2,
                                 shuffle=False, verbose=0)
    assert max_weight_difference(reference, accumulated) < 1e-6


def test_mirrored_input_free_add_loss_counts_once_per_update():
    # A weight penalty added in `call` is on every replica: weighted by each micro-batch's share of
    # the window's global count, it enters once per update, as on one device.
    from test_fit_loss_contracts import _data, _kernel_penalty_model

    x, y, _ = _data()
    reference = _kernel_penalty_model(keras.optimizers.SGD(0.1), with_input_penalty=True)
    reference.fit(x, y, batch_size=24, epochs=2, shuffle=False, verbose=0)
    with _mirrored().scope():
        accumulated = _kernel_penalty_model(keras.optimizers.SGD(0.1), with_input_penalty=True)
    keras_trainx.fit_accumulated(accumulated, x, y, batch_size=8, accum_steps=3, epochs=2,
                                 shuffle=False, verbose=0)
    assert max_weight_difference(reference, accumulated) < 1e-6


def test_mirrored_reported_loss_divisor_matches_single_device_big_batch():
    # Each replica reports the labelled tokens of its share; the window divides by their total.
    from test_fit_loss_contracts import _labelled_tokens, _labelled_tokens_model

    tokens, targets = _labelled_tokens()
    reference = _labelled_tokens_model(report_divisor=True)
    reference.fit(tokens, targets, batch_size=12, epochs=2, shuffle=False, verbose=0)
    with _mirrored().scope():
        accumulated = _labelled_tokens_model(report_divisor=True)
    keras_trainx.fit_accumulated(accumulated, tokens, targets, batch_size=4, accum_steps=3, epochs=2,
                                 shuffle=False, verbose=0)
    assert max_weight_difference(reference, accumulated) < 1e-6


def test_one_gradient_all_reduce_per_update_none_per_micro_step():
    x, y, weights = regression_data()
    counter = AllReduceCounter()
    with _mirrored(counter).scope():
        model = regression_model(keras.optimizers.Adam(0.01))
    # micro-batch 4, 3 per window: 7 micro-batches, 3 updates per epoch, 14 micro-steps in all.
    keras_trainx.fit_accumulated(model, x, y, sample_weight=weights, batch_size=4, accum_steps=3,
                                 epochs=2, verbose=0)
    assert model.optimizer.iterations.numpy() == 6
    assert counter.gradient_reductions.numpy() == 6
    # The window's statistics (divisor, loss sum, samples): one small all-reduce per update.
    assert counter.scalar_reductions.numpy() == 6


@pytest.fixture
def mixed_float16():
    keras.mixed_precision.set_global_policy("mixed_float16")
    yield
    keras.mixed_precision.set_global_policy("float32")


class _WeightsAfterEachWindow(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.snapshots = []

    def on_train_batch_end(self, batch, logs=None):
        optimizer = self.model.optimizer
        self.snapshots.append(
            (self.model.get_weights(), float(optimizer.dynamic_scale.numpy()),
             int(optimizer.iterations.numpy()))
        )


def test_mixed_float16_skips_a_window_with_non_finite_gradients_as_a_whole(mixed_float16):
    x, y, _ = regression_data(n=24)
    # One huge target in the second window: the float32 loss stays finite but its gradient,
    # times the loss scale, overflows float16 on the way back into the hidden layer.
    y[13, 0] = 1e4
    keras.utils.set_random_seed(1)
    model = keras.Sequential([
        keras.Input((5,)),
        keras.layers.Dense(6, activation="tanh"),
        keras.layers.Dense(2, dtype="float32"),
    ])
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    recorder = _WeightsAfterEachWindow()
    keras_trainx.fit_accumulated(model, x, y, batch_size=4, accum_steps=2, shuffle=False,
                                 callbacks=[recorder], verbose=0)
    (first, scale_1, iterations_1), (second, scale_2, iterations_2), (third, scale_3, _) = (
        recorder.snapshots
    )
    for before, after in zip(first, second):
        np.testing.assert_array_equal(before, after)
    assert scale_2 == scale_1 / 2
    assert iterations_2 == iterations_1 == 1
    assert scale_3 == scale_2
    assert any(np.any(a != b) for a, b in zip(second, third))
    assert all(np.all(np.isfinite(w)) for w in third)


@pytest.mark.parametrize("policy, tolerance", [("mixed_float16", 1e-4), ("mixed_bfloat16", 2e-3)])
def test_mixed_precision_matches_big_batch_fit_under_the_same_policy(policy, tolerance):
    # The window's gradient is weighted in float32 after unscaling, so the float16 backward pass
    # sees the magnitudes Model.fit sees: no extra overflow, no skipped windows.
    x, y, weights = regression_data()
    keras.mixed_precision.set_global_policy(policy)
    try:
        reference = regression_model(keras.optimizers.SGD(0.1))
        reference.fit(x, y, sample_weight=weights, batch_size=16, epochs=2, shuffle=False,
                      verbose=0)
        accumulated = regression_model(keras.optimizers.SGD(0.1))
        keras_trainx.fit_accumulated(accumulated, x, y, sample_weight=weights, batch_size=8,
                                     accum_steps=2, epochs=2, shuffle=False, verbose=0)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert accumulated.layers[0].kernel.dtype == "float32"
    assert int(accumulated.optimizer.iterations) == int(reference.optimizer.iterations) == 4
    assert max_weight_difference(reference, accumulated) < tolerance


def test_mirrored_sparse_embedding_gradients_match_single_device_big_batch():
    # An Embedding's gradient arrives as IndexedSlices and is added to each replica's sums with a
    # scatter (repeated tokens summed first); SGD with momentum, where sparse and dense agree.
    rng = np.random.default_rng(4)
    tokens = rng.integers(0, 12, size=(27, 5))
    targets = rng.normal(size=(27, 1)).astype("float32")

    def make():
        keras.utils.set_random_seed(6)
        model = keras.Sequential([keras.Input((5,), dtype="int32"), keras.layers.Embedding(12, 4),
                                  keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(1)])
        model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="mse")
        return model

    reference = make()
    reference.fit(tokens, targets, batch_size=12, epochs=2, shuffle=False, verbose=0)
    with _mirrored().scope():
        accumulated = make()
    keras_trainx.fit_accumulated(accumulated, tokens, targets, batch_size=4, accum_steps=3, epochs=2,
                                 shuffle=False, verbose=0)
    assert max_weight_difference(reference, accumulated) < 1e-6
