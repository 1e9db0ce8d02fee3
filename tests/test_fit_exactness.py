"""Every update of fit_accumulated equals one Model.fit step on the window's concatenated samples.

Reference: `Model.fit(batch_size=micro * accum_steps, shuffle=False)` on the same arrays, whose batches
are exactly the windows (including the shorter last one), from identical initial weights.
"""

import keras
import numpy as np
import pytest

import keras_trainx
from accumulation_helpers import max_weight_difference, regression_data, regression_model

SGD_TOLERANCE = 1e-6
ADAM_TOLERANCE = 1e-5


def _train_both(make_optimizer, micro, accum_steps, epochs=2, **kwargs):
    x, y, weights = regression_data()
    compile_kwargs = kwargs.pop("compile_kwargs", {})
    reference = regression_model(make_optimizer(), **compile_kwargs)
    accumulated = regression_model(make_optimizer(), **compile_kwargs)
    reference_history = reference.fit(
        x, y, sample_weight=weights, batch_size=micro * accum_steps, epochs=epochs,
        shuffle=False, verbose=0, **kwargs,
    )
    history = keras_trainx.fit_accumulated(
        accumulated, x, y, sample_weight=weights, batch_size=micro, accum_steps=accum_steps,
        epochs=epochs, shuffle=False, verbose=0, **kwargs,
    )
    return reference, accumulated, reference_history, history


@pytest.mark.parametrize(
    "make_optimizer, tolerance",
    [
        (lambda: keras.optimizers.SGD(0.1, momentum=0.9), SGD_TOLERANCE),
        (lambda: keras.optimizers.Adam(0.01), ADAM_TOLERANCE),
        (lambda: keras.optimizers.AdamW(0.01, weight_decay=0.1), ADAM_TOLERANCE),
    ],
    ids=["sgd", "adam", "adamw"],
)
def test_unequal_micro_batches_with_sample_weights_match_big_batch(make_optimizer, tolerance):
    # 27 samples, micro-batch 8, 4 per window: one window of 8+8+8+3 per epoch.
    reference, accumulated, _, _ = _train_both(make_optimizer, micro=8, accum_steps=4, epochs=3)
    assert max_weight_difference(reference, accumulated) < tolerance
    assert int(accumulated.optimizer.iterations) == int(reference.optimizer.iterations) == 3


def test_partial_window_at_epoch_end_is_its_own_update():
    # micro 4, 2 per window on 27 samples: windows 4+4, 4+4, 4+4 and a partial window of one
    # micro-batch of 3, applied as an update on its own 3 samples.
    reference, accumulated, _, _ = _train_both(
        lambda: keras.optimizers.SGD(0.05), micro=4, accum_steps=2, epochs=2
    )
    assert int(accumulated.optimizer.iterations) == 8
    assert max_weight_difference(reference, accumulated) < SGD_TOLERANCE


def test_metrics_and_loss_equal_the_big_batch_history():
    _, _, reference_history, history = _train_both(
        lambda: keras.optimizers.SGD(0.05), micro=4, accum_steps=3, epochs=2
    )
    for name in ("loss", "mae"):
        np.testing.assert_allclose(history.history[name], reference_history.history[name], rtol=1e-6)


@pytest.mark.parametrize(
    "clipping",
    [{"global_clipnorm": 0.05}, {"clipnorm": 0.05}, {"clipvalue": 0.01}],
    ids=lambda c: next(iter(c)),
)
def test_gradient_clipping_acts_once_on_the_accumulated_gradient(clipping):
    reference, accumulated, _, _ = _train_both(
        lambda: keras.optimizers.SGD(0.5, **clipping), micro=8, accum_steps=4
    )
    assert max_weight_difference(reference, accumulated) < SGD_TOLERANCE


def test_ema_moves_once_per_update():
    reference, accumulated, _, _ = _train_both(
        lambda: keras.optimizers.Adam(0.05, use_ema=True, ema_momentum=0.5),
        micro=4, accum_steps=3, epochs=2,
    )
    assert max_weight_difference(reference, accumulated) < ADAM_TOLERANCE


def test_learning_rate_schedule_sees_updates_not_micro_steps():
    schedule = lambda: keras.optimizers.schedules.ExponentialDecay(0.1, 1, 0.5)  # noqa: E731
    reference, accumulated, reference_history, history = _train_both(
        lambda: keras.optimizers.SGD(schedule()), micro=8, accum_steps=2, epochs=2
    )
    # windows of 16 and 11 samples: two updates per epoch, the lr halving after each update.
    assert int(accumulated.optimizer.iterations) == 4
    assert float(accumulated.optimizer.learning_rate) == pytest.approx(0.1 * 0.5**4)
    # The logs are fit's: no key of our own (a CSVLogger writes the same columns).
    assert history.history.keys() == reference_history.history.keys() == {"loss", "mae"}
    assert max_weight_difference(reference, accumulated) < SGD_TOLERANCE


def test_class_weights_match_big_batch():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(30, 4)).astype("float32")
    y = rng.integers(0, 3, size=30)
    class_weight = {0: 0.5, 1: 2.0, 2: 1.0}

    def make():
        keras.utils.set_random_seed(5)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
        model.compile(optimizer=keras.optimizers.SGD(0.2), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        return model

    reference, accumulated = make(), make()
    reference.fit(x, y, batch_size=21, class_weight=class_weight, shuffle=False, epochs=2, verbose=0)
    keras_trainx.fit_accumulated(
        accumulated, x, y, batch_size=7, accum_steps=3, class_weight=class_weight, shuffle=False,
        epochs=2, verbose=0,
    )
    assert max_weight_difference(reference, accumulated) < SGD_TOLERANCE


def test_masked_loss_is_normalized_by_the_windows_unmasked_count():
    # Per-timestep outputs behind Embedding(mask_zero=True): each micro-batch has a different number
    # of unmasked tokens, so averaging micro-batch means would be wrong.
    rng = np.random.default_rng(7)
    lengths = rng.integers(1, 9, size=24)
    tokens = np.zeros((24, 8), "int32")
    for row, length in enumerate(lengths):
        tokens[row, :length] = rng.integers(1, 20, size=length)
    labels = rng.integers(0, 4, size=(24, 8))

    def make():
        keras.utils.set_random_seed(9)
        model = keras.Sequential(
            [
                keras.Input((8,), dtype="int32"),
                keras.layers.Embedding(20, 6, mask_zero=True),
                keras.layers.Dense(4, activation="softmax"),
            ]
        )
        model.compile(keras.optimizers.SGD(0.5), "sparse_categorical_crossentropy")
        return model

    reference, accumulated = make(), make()
    reference.fit(tokens, labels, batch_size=12, shuffle=False, epochs=2, verbose=0)
    keras_trainx.fit_accumulated(
        accumulated, tokens, labels, batch_size=3, accum_steps=4, shuffle=False, epochs=2, verbose=0
    )
    assert max_weight_difference(reference, accumulated) < SGD_TOLERANCE


@pytest.mark.parametrize("mode", ["compiled", "run_eagerly", "jit_compile"])
def test_accum_steps_one_is_model_fit_bit_for_bit(mode):
    # Micro-batches of 7, 7, 7 and 6 samples. Before (issue 26), the window multiplied the gradient
    # by the micro-batch's count and divided it again, which rounds unless the count is a power of 2.
    compile_kwargs = {} if mode == "compiled" else {mode: True}
    reference, accumulated, _, _ = _train_both(
        lambda: keras.optimizers.AdamW(0.01), micro=7, accum_steps=1, epochs=2,
        compile_kwargs=compile_kwargs,
    )
    assert int(accumulated.optimizer.iterations) == 8
    assert max_weight_difference(reference, accumulated) == 0.0


def test_remainder_drop_discards_the_partial_window():
    x, y, weights = regression_data()
    reference = regression_model(keras.optimizers.SGD(0.1))
    accumulated = regression_model(keras.optimizers.SGD(0.1))
    # micro 4, 2 per window: micro-batches 4,4,4,4,4,4,3; the last window holds one micro-batch
    # instead of two and is dropped, the three full windows of 8 are kept.
    reference.fit(x[:24], y[:24], sample_weight=weights[:24], batch_size=8, epochs=2,
                  shuffle=False, verbose=0)
    keras_trainx.fit_accumulated(
        accumulated, x, y, sample_weight=weights, batch_size=4, accum_steps=2, remainder="drop",
        epochs=2, shuffle=False, verbose=0,
    )
    assert int(accumulated.optimizer.iterations) == 6
    assert max_weight_difference(reference, accumulated) < SGD_TOLERANCE


@pytest.mark.parametrize("mode", ["run_eagerly", "jit_compile"])
def test_eager_and_xla_compiled_windows_match_big_batch(mode):
    x, y, weights = regression_data()
    reference = regression_model(keras.optimizers.Adam(0.01))
    accumulated = regression_model(keras.optimizers.Adam(0.01), **{mode: True})
    reference.fit(x, y, sample_weight=weights, batch_size=16, shuffle=False, verbose=0)
    keras_trainx.fit_accumulated(
        accumulated, x, y, sample_weight=weights, batch_size=8, accum_steps=2, shuffle=False,
        verbose=0,
    )
    assert max_weight_difference(reference, accumulated) < ADAM_TOLERANCE
