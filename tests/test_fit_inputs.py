"""fit_accumulated's inputs (tf.data, PyDataset, generators, steps_per_epoch), argument checks, and
the accumulators' absence from the model's weights and saved files."""

import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_trainx
from keras_trainx.accumulation.window import WindowStep
from accumulation_helpers import max_weight_difference, regression_data, regression_model


def _reference_on_windows(windows, epochs):
    """Model.fit whose every batch is one window (micro-batches concatenated)."""
    reference = regression_model(keras.optimizers.Adam(0.01))
    big_batches = [
        tuple(np.concatenate(parts) for parts in zip(*window)) for window in windows
    ]

    def generate():
        while True:
            yield from big_batches

    reference.fit(generate(), steps_per_epoch=len(big_batches) // epochs, epochs=epochs, verbose=0)
    return reference


class _MicroBatches(keras.utils.PyDataset):
    def __init__(self, x, y, weights, batch_size):
        super().__init__()
        self.x, self.y, self.weights, self.batch_size = x, y, weights, batch_size

    def __len__(self):
        return -(-len(self.x) // self.batch_size)

    def __getitem__(self, index):
        part = slice(index * self.batch_size, (index + 1) * self.batch_size)
        return self.x[part], self.y[part], self.weights[part]


def _micro_batches(batch_size):
    x, y, weights = regression_data()
    return [
        (x[i:i + batch_size], y[i:i + batch_size], weights[i:i + batch_size])
        for i in range(0, len(x), batch_size)
    ]


@pytest.mark.parametrize("source", ["tf.data", "PyDataset"])
def test_dataset_inputs_match_big_batch(source):
    x, y, weights = regression_data()
    micro = _micro_batches(8)  # 8, 8, 8, 3
    if source == "tf.data":
        data = tf.data.Dataset.from_tensor_slices((x, y, weights)).batch(8)
    else:
        data = _MicroBatches(x, y, weights, 8)
    accumulated = regression_model(keras.optimizers.Adam(0.01))
    # shuffle=False: as in Model.fit, shuffle=True would reorder a PyDataset's batches.
    keras_trainx.fit_accumulated(accumulated, data, accum_steps=3, epochs=2, shuffle=False,
                                 verbose=0)
    windows = [micro[:3], micro[3:]] * 2
    assert int(accumulated.optimizer.iterations) == 4
    assert max_weight_difference(_reference_on_windows(windows, 2), accumulated) < 1e-5


def test_generator_with_steps_per_epoch_counts_micro_batches():
    micro = _micro_batches(8)

    def generate():
        while True:
            yield from micro

    accumulated = regression_model(keras.optimizers.Adam(0.01))
    # 5 micro-batches per epoch in windows of 2: 2 + 2 + 1, the stream continuing across epochs.
    keras_trainx.fit_accumulated(accumulated, generate(), accum_steps=2, steps_per_epoch=5,
                                 epochs=2, verbose=0)
    stream = micro * 3
    windows = [stream[0:2], stream[2:4], stream[4:5], stream[5:7], stream[7:9], stream[9:10]]
    assert int(accumulated.optimizer.iterations) == 6
    assert max_weight_difference(_reference_on_windows(windows, 2), accumulated) < 1e-5


def test_dataset_of_unknown_length_applies_its_partial_last_window():
    x, y, weights = regression_data()
    data = tf.data.Dataset.from_tensor_slices((x, y, weights)).batch(8).filter(lambda *_: True)
    assert data.cardinality() == tf.data.UNKNOWN_CARDINALITY
    accumulated = regression_model(keras.optimizers.Adam(0.01))
    keras_trainx.fit_accumulated(accumulated, data, accum_steps=3, epochs=2, verbose=0)
    micro = _micro_batches(8)
    assert int(accumulated.optimizer.iterations) == 4
    assert max_weight_difference(
        _reference_on_windows([micro[:3], micro[3:]] * 2, 2), accumulated
    ) < 1e-5


def test_accumulators_are_not_model_or_saved_state(tmp_path):
    x, y, _ = regression_data()
    model = regression_model(keras.optimizers.Adam(0.01))
    keras_trainx.fit_accumulated(model, x, y, batch_size=8, accum_steps=2, verbose=0)
    plain = regression_model(keras.optimizers.Adam(0.01))
    plain.fit(x, y, batch_size=8, verbose=0)
    assert [w.shape for w in model.weights] == [w.shape for w in plain.weights]
    assert len(model.weights) == len(plain.weights) == 4
    assert len(model.get_weights()) == len(plain.get_weights()) == 4
    assert not any("accumulated" in v.path for v in model.optimizer.variables)
    model.save(tmp_path / "model.keras")
    plain.save(tmp_path / "plain.keras")
    with zipfile.ZipFile(tmp_path / "model.keras") as ours, zipfile.ZipFile(
        tmp_path / "plain.keras"
    ) as theirs:
        assert ours.getinfo("model.weights.h5").file_size == theirs.getinfo(
            "model.weights.h5").file_size


def _compiled(**compile_kwargs):
    return regression_model(keras.optimizers.SGD(0.1), **compile_kwargs)


@pytest.mark.parametrize(
    "accum_steps, error, message",
    [
        (0, ValueError, "`accum_steps` must be an int >= 1; received accum_steps=0"),
        (2.0, TypeError, "`accum_steps` must be an int; received accum_steps=2.0"),
        (True, TypeError, "`accum_steps` must be an int; received accum_steps=True"),
        ("4", TypeError, "received accum_steps='4' of type str"),
    ],
)
def test_bad_accum_steps(accum_steps, error, message):
    x, y, _ = regression_data()
    with pytest.raises(error, match=message):
        keras_trainx.fit_accumulated(_compiled(), x, y, accum_steps=accum_steps)


def test_bad_remainder_names_the_choices():
    x, y, _ = regression_data()
    with pytest.raises(ValueError, match="`remainder` must be one of 'apply', 'drop'; received remainder='keep'"):
        keras_trainx.fit_accumulated(_compiled(), x, y, accum_steps=2, remainder="keep")


def test_uncompiled_model_is_refused():
    x, y, _ = regression_data()
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match=r"model must be compiled.*model.compile\("):
        keras_trainx.fit_accumulated(model, x, y, accum_steps=2)


def test_optimizer_with_builtin_accumulation_is_refused():
    x, y, _ = regression_data()
    model = regression_model(keras.optimizers.SGD(0.1, gradient_accumulation_steps=2))
    with pytest.raises(ValueError, match="gradient_accumulation_steps=2.*pass accum_steps"):
        keras_trainx.fit_accumulated(model, x, y, accum_steps=2)


def test_per_sample_loss_reduction_is_refused_with_the_fix():
    x, y, _ = regression_data()
    model = _compiled(loss=keras.losses.MeanSquaredError(reduction="none"))
    with pytest.raises(ValueError, match=r"reduction=\['none'\].*Compile with one of"):
        keras_trainx.fit_accumulated(model, x, y, accum_steps=2, verbose=0)


def test_mixed_reductions_are_refused_with_the_fix():
    inputs = keras.Input((5,))
    model = keras.Model(inputs, [keras.layers.Dense(1)(inputs), keras.layers.Dense(1)(inputs)])
    model.compile(optimizer="sgd", loss=[keras.losses.MeanSquaredError(reduction="sum"), "mse"])
    x, y, _ = regression_data()
    with pytest.raises(ValueError, match="one reduction for all compiled losses.*same reduction"):
        keras_trainx.fit_accumulated(model, x, (y, y), accum_steps=2, verbose=0)


def test_unknown_fit_argument_is_a_type_error():
    x, y, _ = regression_data()
    with pytest.raises(TypeError, match="unexpected keyword argument 'batchsize'"):
        keras_trainx.fit_accumulated(_compiled(), x, y, accum_steps=2, batchsize=8)


def test_second_call_reuses_the_traced_window_and_continues_exactly():
    x, y, weights = regression_data()
    reference = regression_model(keras.optimizers.Adam(0.01))
    reference.fit(x, y, sample_weight=weights, batch_size=16, epochs=2, shuffle=False, verbose=0)
    accumulated = regression_model(keras.optimizers.Adam(0.01))
    arguments = dict(sample_weight=weights, batch_size=8, accum_steps=2, shuffle=False, verbose=0)
    keras_trainx.fit_accumulated(accumulated, x, y, **arguments)
    first = WindowStep.for_model(accumulated, apply_partial=True)
    keras_trainx.fit_accumulated(accumulated, x, y, **arguments)
    assert WindowStep.for_model(accumulated, apply_partial=True) is first
    assert max_weight_difference(reference, accumulated) < 1e-5
    accumulated.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    keras_trainx.fit_accumulated(accumulated, x, y, **arguments)
    assert WindowStep.for_model(accumulated, apply_partial=True) is not first
    # fit_accumulated leaves the model's own functions as they were.
    assert accumulated.train_function is None and accumulated.steps_per_execution == 1


def test_dataset_of_unknown_length_drops_its_partial_last_window():
    x, y, weights = regression_data()
    data = tf.data.Dataset.from_tensor_slices((x, y, weights)).batch(8).filter(lambda *_: True)
    accumulated = regression_model(keras.optimizers.Adam(0.01))
    keras_trainx.fit_accumulated(accumulated, data, accum_steps=3, remainder="drop", epochs=2,
                                 verbose=0)
    micro = _micro_batches(8)
    # The end of data shows only after the last window started: its one micro-batch is discarded.
    assert int(accumulated.optimizer.iterations) == 2
    assert max_weight_difference(_reference_on_windows([micro[:3]] * 2, 2), accumulated) < 1e-5


def test_two_runs_end_with_bitwise_identical_weights():
    # Micro-steps run one after another, so the window's gradient is summed in a fixed order.
    x, y, weights = regression_data()
    models = [regression_model(keras.optimizers.Adam(0.01)) for _ in range(2)]
    for model in models:
        keras_trainx.fit_accumulated(model, x, y, sample_weight=weights, batch_size=4,
                                     accum_steps=3, epochs=2, shuffle=False, verbose=0)
    for a, b in zip(models[0].get_weights(), models[1].get_weights()):
        np.testing.assert_array_equal(a, b)


class _Interrupted(keras.utils.PyDataset):
    """Two micro-batches, then the `exception` raised from `__getitem__`."""

    def __init__(self, exception):
        super().__init__()
        self.exception = exception
        self.batches = _micro_batches(8)

    def __len__(self):
        return 4

    def __getitem__(self, index):
        if index == 2:
            raise self.exception
        return self.batches[index]


def _interrupted_generator(exception):
    yield from _micro_batches(8)[:2]
    raise exception


@pytest.mark.parametrize("source", ["generator", "PyDataset"])
def test_a_keyboard_interrupt_raised_by_the_data_is_a_keyboard_interrupt(source):
    """Model.fit reports it as tf.errors.UnknownError (issue #26); the model keeps its own functions."""
    model = regression_model(keras.optimizers.Adam(0.01))
    interrupt = KeyboardInterrupt("stop")
    data = _interrupted_generator(interrupt) if source == "generator" else _Interrupted(interrupt)
    with pytest.raises(KeyboardInterrupt) as info:
        keras_trainx.fit_accumulated(model, data, accum_steps=2, steps_per_epoch=4, verbose=0)
    assert info.value.args == ("stop",)
    assert isinstance(info.value.__cause__, tf.errors.UnknownError)
    assert model.train_function is None
    before = int(model.optimizer.iterations)
    x, y, _ = regression_data()
    keras_trainx.fit_accumulated(model, x, y, batch_size=8, accum_steps=2, verbose=0)
    assert int(model.optimizer.iterations) == before + 2


def test_other_errors_raised_by_the_data_stay_tensorflows():
    model = regression_model(keras.optimizers.Adam(0.01))
    with pytest.raises(tf.errors.UnknownError, match="OSError: disk gone"):
        keras_trainx.fit_accumulated(model, _interrupted_generator(OSError("disk gone")), accum_steps=2,
                                     steps_per_epoch=4, verbose=0)
