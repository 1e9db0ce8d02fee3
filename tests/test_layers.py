"""Mish and HardMish layers: same numbers as the functions, registered, saved and loaded in .keras."""

import json

import keras
import numpy as np
import pytest

from keras_trainx import activations, layers

X = np.linspace(-6, 6, 25, dtype="float32").reshape(5, 5)


@pytest.mark.parametrize("layer_class,fn", [(layers.Mish, activations.mish), (layers.HardMish, activations.hard_mish)])
def test_layer_applies_its_function(layer_class, fn):
    layer = layer_class(name="act")
    np.testing.assert_array_equal(layer(X).numpy(), fn(X).numpy())
    assert layer.compute_output_shape((None, 5)) == (None, 5)
    assert layer.weights == []


@pytest.mark.parametrize("layer_class", [layers.Mish, layers.HardMish])
def test_layer_config_is_registered_and_round_trips(layer_class):
    config = json.loads(json.dumps(keras.saving.serialize_keras_object(layer_class(name="a", dtype="float16"))))
    assert config["registered_name"] == f"keras_trainx>{layer_class.__name__}"
    restored = keras.saving.deserialize_keras_object(config)
    assert type(restored) is layer_class and restored.name == "a" and restored.dtype_policy.name == "float16"


def test_model_with_layers_saves_and_loads_as_keras(tmp_path):
    model = keras.Sequential(
        [keras.Input((5,)), keras.layers.Dense(4), layers.Mish(), keras.layers.Dense(3), layers.HardMish()]
    )
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert [type(layer) for layer in loaded.layers[1::2]] == [layers.Mish, layers.HardMish]
    np.testing.assert_array_equal(loaded.predict(X, verbose=0), model.predict(X, verbose=0))


def test_mish_layer_propagates_masks():
    inputs = keras.Input((3, 2))
    masked = keras.layers.Masking(0.0)(inputs)
    assert layers.Mish()(masked)._keras_mask is not None
