"""custom_objects(), load_model() and referenced_objects() on new .keras models and real tf.keras 2 models."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_trainx
from keras_trainx import activations, layers, saving, schedules

HERE = os.path.dirname(os.path.abspath(__file__))


def _run(script, *args):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.Popen(
        [sys.executable, os.path.join(HERE, script), *map(str, args)], env=env, stderr=subprocess.PIPE, text=True
    )


def _wait(process):
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]


@pytest.fixture(scope="module")
def legacy(tmp_path_factory):
    """Real tf.keras 2 models, built by tf_keras in a subprocess (see tests/legacy_tf_keras_models.py)."""
    out = tmp_path_factory.mktemp("legacy")
    _wait(_run("legacy_tf_keras_models.py", out))
    return out


def test_custom_objects_holds_registered_names_and_legacy_aliases():
    objects = keras_trainx.custom_objects()
    assert objects == {
        "keras_trainx>CosineAnnealingWarmupRestarts": schedules.CosineAnnealingWarmupRestarts,
        "keras_trainx>HardMish": layers.HardMish,
        "keras_trainx>Mish": layers.Mish,
        "keras_trainx>MultiStepDecay": schedules.MultiStepDecay,
        "keras_trainx>OneCycle": schedules.OneCycle,
        "keras_trainx>WarmUp": schedules.WarmUp,
        "keras_trainx>hard_mish": activations.hard_mish,
        "Mish": saving.legacy_mish,
        "mish": keras.activations.mish,
    }
    objects.clear()
    assert "keras_trainx>WarmUp" in keras_trainx.custom_objects()


@pytest.mark.parametrize("name", ["recipe", "function", "lowercase"])
def test_legacy_tf_keras_h5_loads_with_identical_predictions(legacy, name, tmp_path):
    x = np.load(legacy / "x.npy")
    model = keras_trainx.load_model(legacy / f"{name}.h5", compile=False)
    np.testing.assert_allclose(model.predict(x, verbose=0), np.load(legacy / f"{name}.npy"), rtol=1e-6, atol=1e-6)
    model.save(tmp_path / "migrated.keras")
    migrated = keras_trainx.load_model(tmp_path / "migrated.keras")
    np.testing.assert_array_equal(migrated.predict(x, verbose=0), model.predict(x, verbose=0))


def test_legacy_recipe_needs_the_bundle_and_becomes_mish_layers(legacy):
    with pytest.raises(TypeError, match="Mish"):
        keras.models.load_model(legacy / "recipe.h5", compile=False)
    model = keras_trainx.load_model(legacy / "recipe.h5", compile=False)
    assert [type(layer).__name__ for layer in model.layers] == ["InputLayer", "Dense", "Activation", "Mish", "Dense"]
    assert model.layers[1].activation is saving.legacy_mish and model.layers[2].activation is saving.legacy_mish
    assert saving.referenced_objects(legacy / "recipe.h5") == {"Mish": True}


def test_users_custom_objects_win(legacy):
    x = np.load(legacy / "x.npy")
    model = keras_trainx.load_model(legacy / "function.h5", custom_objects={"Mish": keras.activations.relu}, compile=False)
    assert model.layers[1].activation is keras.activations.relu
    assert not np.allclose(model.predict(x, verbose=0), np.load(legacy / "function.npy"), atol=1e-3)


def test_users_keys_win_over_our_registered_objects_and_the_registry_is_restored(tmp_path):
    """README: in `load_model(path, custom_objects=...)` the caller's keys win over the bundle."""
    model = keras.Sequential([keras.Input((3,)), layers.Mish(), keras.layers.Dense(2, activation=activations.hard_mish)])
    model.save(tmp_path / "m.keras")
    x = np.array([[-2.0, 0.5, 3.0]], np.float32)

    def twice(t):
        return 2.0 * t

    loaded = keras_trainx.load_model(tmp_path / "m.keras", custom_objects={
        "keras_trainx>Mish": keras.layers.ReLU, "keras_trainx>hard_mish": twice})
    assert [type(layer) for layer in loaded.layers] == [keras.layers.ReLU, keras.layers.Dense]
    assert loaded.layers[1].activation is twice
    kernel, bias = model.layers[1].get_weights()
    np.testing.assert_allclose(loaded.predict(x, verbose=0), 2.0 * (np.maximum(x, 0) @ kernel + bias), rtol=1e-6)
    registry = keras.saving.get_custom_objects()
    assert registry["keras_trainx>Mish"] is layers.Mish and registry["keras_trainx>hard_mish"] is activations.hard_mish
    assert type(keras_trainx.load_model(tmp_path / "m.keras").layers[0]) is layers.Mish


def test_compiled_tf_keras_h5_loads_or_says_to_pass_compile_false(legacy):
    # Keras 3.15 cannot rebuild a tf.keras 2 training config; Keras 3.16 can. Ours follows Keras,
    # and where Keras fails, says what to do.
    try:
        keras.saving.load_model(legacy / "recipe.h5", custom_objects=keras_trainx.custom_objects())
    except Exception:  # noqa: BLE001 - whichever error Keras raises, ours must be the clear one
        with pytest.raises(ValueError, match="tf.keras 2 training config .* Pass compile=False"):
            keras_trainx.load_model(legacy / "recipe.h5")
    else:
        assert keras_trainx.load_model(legacy / "recipe.h5").compiled


def test_unknown_objects_are_listed(legacy):
    assert saving.referenced_objects(legacy / "unknown.h5") == {"Mish": True, "Scaler": False}
    with pytest.raises(ValueError, match=r"your custom_objects know: Scaler\. Pass them"):
        keras_trainx.load_model(legacy / "unknown.h5", compile=False)


def test_savedmodel_directory_points_to_tfsmlayer(legacy):
    with pytest.raises(ValueError, match=r"SavedModel directory.*keras\.layers\.TFSMLayer"):
        keras_trainx.load_model(legacy / "savedmodel")


def test_unregistered_keras3_objects_are_listed_by_name(tmp_path):
    registry = keras.saving.get_custom_objects()

    @keras.saving.register_keras_serializable(package="kt_test")
    class Scale(keras.layers.Layer):
        def call(self, x):
            return 3.0 * x

    @keras.saving.register_keras_serializable(package="kt_test")
    def cube(x):
        return x * x * x

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, activation=cube), Scale(), layers.Mish()])
    model.save(tmp_path / "m.keras")
    del registry["kt_test>Scale"], registry["kt_test>cube"]
    assert saving.referenced_objects(tmp_path / "m.keras") == {
        "keras_trainx>Mish": True,
        "kt_test>Scale": False,
        "kt_test>cube": False,
    }
    with pytest.raises(ValueError, match=r"know: kt_test>Scale, kt_test>cube\. Pass them"):
        keras_trainx.load_model(tmp_path / "m.keras")
    loaded = keras_trainx.load_model(tmp_path / "m.keras", custom_objects={"kt_test>Scale": Scale, "kt_test>cube": cube})
    np.testing.assert_array_equal(loaded.predict(np.ones((1, 2)), verbose=0), model.predict(np.ones((1, 2)), verbose=0))


def test_bad_paths_and_arguments(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(ValueError, match="neither a .keras zip"):
        saving.referenced_objects(tmp_path / "notes.txt")
    with pytest.raises(TypeError, match="`custom_objects` must be a dict"):
        keras_trainx.load_model(tmp_path / "notes.txt", custom_objects=[layers.Mish])


def _model():
    keras.utils.set_random_seed(7)
    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(16, activation=activations.hard_mish),
            layers.Mish(),
            keras.layers.Dense(16, activation="mish"),
            layers.HardMish(),
            keras.layers.Dense(3),
        ]
    )
    schedule = schedules.WarmUp(keras.optimizers.schedules.CosineDecay(0.01, decay_steps=40), warmup_steps=3)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=schedule),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def test_fit_accumulated_model_loads_in_fresh_processes_three_ways(tmp_path):
    import fresh_process_load

    rng = np.random.default_rng(0)
    data = {
        "x": rng.normal(size=(38, 6)).astype("float32"),
        "y": rng.integers(0, 3, size=38),
        "x_test": rng.normal(size=(5, 6)).astype("float32"),
    }
    np.savez(tmp_path / "data.npz", **data)
    model = _model()
    # 38 samples in micro-batches of 4: 10 micro-batches, windows of 3 -> 4 updates per epoch (last one partial).
    keras_trainx.fit_accumulated(model, data["x"], data["y"], accum_steps=3, batch_size=4, epochs=2, shuffle=False, verbose=0)
    assert int(model.optimizer.iterations) == 8
    model.save(tmp_path / "model.keras")

    modes = ["plain", "custom_objects", "load_model"]
    children = [_run("fresh_process_load.py", m, tmp_path / "model.keras", tmp_path / "data.npz", tmp_path / f"{m}.npz") for m in modes]
    expected = fresh_process_load.snapshot(model, data)
    assert expected["learning_rate"] == pytest.approx(0.01 * 0.5 * (1 + np.cos(np.pi * 5 / 40)), rel=1e-6)
    expected.update(fresh_process_load.after_training(model, data))
    assert int(expected["continued_iterations"]) == 12
    for mode, child in zip(modes, children):
        _wait(child)
        got = dict(np.load(tmp_path / f"{mode}.npz"))
        assert str(got.pop("schedule")) == "WarmUp", mode
        assert got.keys() == expected.keys(), mode
        for key, value in expected.items():
            np.testing.assert_array_equal(got[key], value, err_msg=f"{mode}: {key}")
