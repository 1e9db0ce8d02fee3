"""fit_accumulated as a drop-in for Model.fit: each case here failed when fit_accumulated copied fit's loop.

References are computed without fit_accumulated: a big-batch `Model.fit` on the windows' samples, or
`Model.evaluate`, from identical initial weights.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_trainx
from accumulation_helpers import (
    assert_equals_big_batch, max_weight_difference, regression_data, regression_model)


class _Batches(keras.utils.PyDataset):
    """Batches of fixed arrays in order, optionally read by worker threads or processes."""

    def __init__(self, x, y, batch_size, **kwargs):
        super().__init__(**kwargs)
        self.x, self.y, self.batch_size = x, y, batch_size

    def __len__(self):
        return -(-len(self.x) // self.batch_size)

    def __getitem__(self, index):
        part = slice(index * self.batch_size, (index + 1) * self.batch_size)
        return self.x[part], self.y[part]


@pytest.mark.parametrize("use_multiprocessing", [False, True], ids=["threads", "processes"])
def test_pydataset_with_workers_trains_every_sample_once_per_epoch(use_multiprocessing):
    x, y, _ = regression_data(n=64)
    reference = regression_model(keras.optimizers.SGD(0.1))
    reference.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    accumulated = regression_model(keras.optimizers.SGD(0.1))
    data = _Batches(x, y, 4, workers=2, use_multiprocessing=use_multiprocessing)
    keras_trainx.fit_accumulated(accumulated, data, accum_steps=4, epochs=2, shuffle=False,
                                 verbose=0)
    assert int(accumulated.optimizer.iterations) == 8
    assert max_weight_difference(reference, accumulated) < 1e-6


def test_an_interrupted_window_leaves_nothing_for_the_next_run():
    x, y, _ = regression_data()

    def failing_batches():
        yield x[:4], y[:4]
        raise KeyboardInterrupt  # Ctrl-C in the middle of the first window

    accumulated = regression_model(keras.optimizers.SGD(0.1))
    with pytest.raises(KeyboardInterrupt):
        keras_trainx.fit_accumulated(accumulated, failing_batches(), accum_steps=3, verbose=0)
    assert int(accumulated.optimizer.iterations) == 0
    keras_trainx.fit_accumulated(accumulated, x, y, batch_size=4, accum_steps=3, shuffle=False,
                                 verbose=0)
    reference = regression_model(keras.optimizers.SGD(0.1))
    reference.fit(x, y, batch_size=12, shuffle=False, verbose=0)
    assert max_weight_difference(reference, accumulated) < 1e-6
    assert accumulated.train_function is None and accumulated.steps_per_execution == 1


class _StopAfterValidation(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        raise RuntimeError("stopped after the first validation")


def test_next_run_validates_on_its_own_validation_data():
    x, y, _ = regression_data()
    model = regression_model(keras.optimizers.SGD(0.01))
    with pytest.raises(RuntimeError, match="stopped after the first validation"):
        keras_trainx.fit_accumulated(model, x, y, batch_size=4, accum_steps=2, verbose=0,
                                     validation_data=(x, y), callbacks=[_StopAfterValidation()])
    xv, yv, _ = regression_data(n=10, seed=5)
    yv = yv * 100.0
    history = keras_trainx.fit_accumulated(model, x, y, batch_size=4, accum_steps=2, verbose=0,
                                           validation_data=(xv, yv))
    expected = model.evaluate(xv, yv, verbose=0, return_dict=True)
    assert history.history["val_loss"][0] == pytest.approx(expected["loss"], rel=1e-5)


def test_model_without_trainable_weights_warns_and_runs_as_fit():
    x, y, _ = regression_data()
    model = regression_model(keras.optimizers.SGD(0.1))
    for layer in model.layers:
        layer.trainable = False
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    before = model.get_weights()
    with pytest.warns(UserWarning, match="does not have any trainable weights"):
        history = keras_trainx.fit_accumulated(model, x, y, batch_size=4, accum_steps=2,
                                               verbose=0)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    expected = model.evaluate(x, y, verbose=0, return_dict=True)
    assert history.history["loss"][0] == pytest.approx(expected["loss"], rel=1e-6)


def test_compiled_steps_per_execution_runs_that_many_updates_per_call():
    x, y, weights = regression_data()
    reference = regression_model(keras.optimizers.Adam(0.01))
    reference.fit(x, y, sample_weight=weights, batch_size=6, epochs=2, shuffle=False, verbose=0)
    accumulated = regression_model(keras.optimizers.Adam(0.01), steps_per_execution=2)
    calls = []
    counter = keras.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: calls.append(b))
    keras_trainx.fit_accumulated(accumulated, x, y, sample_weight=weights, batch_size=2,
                                 accum_steps=3, epochs=2, shuffle=False, verbose=0,
                                 callbacks=[counter])
    # 14 micro-batches a epoch, executions of 2 windows of 3: 3 calls, 5 updates per epoch.
    assert int(accumulated.optimizer.iterations) == 10
    assert calls == [5, 11, 17] * 2
    assert max_weight_difference(reference, accumulated) < 1e-5
    assert accumulated.steps_per_execution == 2


def test_max_epochs_caps_the_run_as_in_fit():
    x, y, _ = regression_data()
    model = regression_model(keras.optimizers.SGD(0.1))
    keras.config.set_max_epochs(2)
    try:
        with pytest.warns(UserWarning, match="Limiting epochs to 2"):
            history = keras_trainx.fit_accumulated(model, x, y, batch_size=4, accum_steps=2,
                                                   epochs=5, verbose=0)
    finally:
        keras.config.set_max_epochs(None)
    assert len(history.history["loss"]) == 2


def test_generator_leaving_out_an_optional_input_trains_as_fit():
    def build():
        keras.utils.set_random_seed(3)
        features = keras.Input((5,), name="features")
        extra = keras.Input((5,), name="extra", optional=True)

        class AddIfGiven(keras.layers.Layer):
            def call(self, features, extra=None):
                return features if extra is None else features + extra

        outputs = keras.layers.Dense(2)(AddIfGiven()(features, extra))
        model = keras.Model({"features": features, "extra": extra}, outputs)
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        return model

    x, y, _ = regression_data(n=24)

    def batches(size):
        for start in range(0, 24, size):
            yield {"features": x[start:start + size], "extra": None}, y[start:start + size]

    reference = build()
    reference.fit(batches(12), verbose=0)
    accumulated = build()
    keras_trainx.fit_accumulated(accumulated, batches(4), accum_steps=3, verbose=0)
    assert int(accumulated.optimizer.iterations) == 2
    assert max_weight_difference(reference, accumulated) < 1e-6


class OwnStepModel(keras.Model):
    """A model with its own train_step: counts its calls and trains with plain SGD on MSE."""

    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(2)
        self.calls = tf.Variable(0, trainable=False)

    def call(self, x):
        return self.dense(x)

    def train_step(self, data):
        x, y = data
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(self(x) - y))
        gradients = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply_gradients(zip(gradients, self.trainable_variables))
        self.calls.assign_add(1)
        return {"own_loss": loss}


def test_own_train_step_runs_with_one_step_and_is_refused_with_more():
    x, y, _ = regression_data(n=24)
    model = OwnStepModel()
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    history = keras_trainx.fit_accumulated(model, x, y, batch_size=8, accum_steps=1, verbose=0)
    assert int(model.calls) == 3
    assert set(history.history) == {"own_loss"}
    with pytest.raises(ValueError, match="overrides train_step.*Override compute_loss instead"):
        keras_trainx.fit_accumulated(model, x, y, batch_size=8, accum_steps=2, verbose=0)


class OwnLossModel(keras.Model):
    """A model with its own compute_loss: mean absolute error plus an L2 penalty on its output."""

    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(2)

    def call(self, x):
        return self.dense(x)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        return tf.reduce_mean(tf.abs(y_pred - y)) + 0.01 * tf.reduce_mean(tf.square(y_pred))


def test_own_compute_loss_is_honoured_by_every_micro_step():
    x, y, _ = regression_data(n=24)

    def build():
        keras.utils.set_random_seed(4)
        model = OwnLossModel()
        model.compile(optimizer=keras.optimizers.SGD(0.1))
        model.build((None, 5))
        return model

    reference = build()
    reference.fit(x, y, batch_size=12, epochs=2, shuffle=False, verbose=0)
    accumulated = build()
    keras_trainx.fit_accumulated(accumulated, x, y, batch_size=4, accum_steps=3, epochs=2,
                                 shuffle=False, verbose=0)
    assert max_weight_difference(reference, accumulated) < 1e-6


class KeepsPreprocessing(keras.Sequential):
    """A model whose `fit` maps its raw input first, as KerasHub tasks attach their preprocessor,
    with an argument of its own that `Model.fit` does not have."""

    def fit(self, x=None, y=None, scale=1.0, **kwargs):
        return super().fit(x / scale, y, **kwargs)


def test_a_model_class_with_its_own_fit_keeps_it():
    x, y, _ = regression_data()

    def build(cls):
        keras.utils.set_random_seed(5)
        model = cls([keras.Input((5,)), keras.layers.Dense(2)])
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        return model

    reference = build(keras.Sequential)
    reference.fit(x / 10.0, y, batch_size=9, shuffle=False, verbose=0)
    accumulated = build(KeepsPreprocessing)
    keras_trainx.fit_accumulated(accumulated, x, y, batch_size=3, accum_steps=3, shuffle=False,
                                 verbose=0, scale=10.0)
    assert max_weight_difference(reference, accumulated) < 1e-6


@pytest.mark.parametrize("run_eagerly", [False, True], ids=["compiled", "eager"])
def test_multi_output_history_equals_the_big_batch_fit(run_eagerly):
    def build():
        keras.utils.set_random_seed(6)
        inputs = keras.Input((5,))
        hidden = keras.layers.Dense(4, activation="tanh")(inputs)
        model = keras.Model(inputs, {"a": keras.layers.Dense(2, name="a")(hidden),
                                     "b": keras.layers.Dense(1, name="b")(hidden)})
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss={"a": "mse", "b": "mae"},
                      loss_weights={"a": 1.0, "b": 0.5}, metrics={"b": ["mse"]},
                      run_eagerly=run_eagerly)
        return model

    x, y, weights = regression_data()
    targets = {"a": y, "b": y[:, :1] * 2}
    reference = build()
    expected = reference.fit(x, targets, sample_weight=weights, batch_size=8, epochs=2,
                             shuffle=False, verbose=0)
    accumulated = build()
    history = keras_trainx.fit_accumulated(accumulated, x, targets, sample_weight=weights,
                                           batch_size=2, accum_steps=4, epochs=2, shuffle=False,
                                           verbose=0)
    assert set(history.history) == set(expected.history) == {"loss", "a_loss", "b_loss", "b_mse"}
    # Each output's loss: Keras counts a call of its compiled step as the batch size it was traced
    # with (1 for an unknown size; Keras 3.16 traces its first batches with a known one), which no
    # accumulation can mirror; run eagerly, a call counts as its batch size in every version.
    compared = expected.history if run_eagerly else ("loss", "b_mse")
    for name in compared:
        np.testing.assert_allclose(history.history[name], expected.history[name], rtol=1e-5,
                                   err_msg=name)
    assert max_weight_difference(reference, accumulated) < 1e-6


def _sequence_model(loss):
    keras.utils.set_random_seed(7)
    model = keras.Sequential([
        keras.Input((6,), dtype="int32"),
        keras.layers.Embedding(12, 4, mask_zero=True),
        keras.layers.Dense(3),
    ])
    model.compile(optimizer=keras.optimizers.SGD(0.2), loss=loss)
    return model


def _padded_sequences():
    rng = np.random.default_rng(8)
    tokens = rng.integers(1, 12, size=(20, 6))
    lengths = rng.integers(1, 7, size=20)
    tokens[np.arange(6)[None, :] >= lengths[:, None]] = 0
    targets = rng.integers(0, 3, size=(20, 6))
    weights = rng.uniform(0.5, 2.0, size=(20, 6)).astype("float32")
    return tokens, targets, weights


@pytest.mark.parametrize("reduction", ["sum_over_batch_size", "mean_with_sample_weight", "sum"])
def test_every_loss_reduction_of_a_masked_per_token_loss_is_exact(reduction):
    tokens, targets, weights = _padded_sequences()
    # micro-batches 3, 3, 3 | 3, 3, 3 | 2: windows of unequal numbers of real tokens.
    assert_equals_big_batch(
        lambda: _sequence_model(keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction=reduction)),
        tokens, targets, weights, micro=3, accum_steps=3)


def test_sum_reduction_counts_regularization_once_per_update():
    x, y, weights = regression_data()
    assert_equals_big_batch(
        lambda: regression_model(keras.optimizers.SGD(0.01),
                                 loss=keras.losses.MeanSquaredError(reduction="sum")),
        x, y, weights, micro=4, accum_steps=3)


def test_model_fit_after_fit_accumulated_uses_the_models_own_step():
    x, y, _ = regression_data()
    model = regression_model(keras.optimizers.SGD(0.1))
    keras_trainx.fit_accumulated(model, x, y, batch_size=4, accum_steps=2, verbose=0)
    model.fit(x, y, batch_size=4, verbose=0)  # 7 steps of its own, not 4 windows
    assert int(model.optimizer.iterations) == 4 + 7
