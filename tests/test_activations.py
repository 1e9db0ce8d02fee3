"""Our Mish entry points (the layer, the tf.keras 2 "Mish" name) and hard_mish against float64 formulas;
finiteness far out in float32/float16."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_trainx import activations, layers, saving


def _mish64(x):
    return x * np.tanh(np.logaddexp(0.0, x))


def _mish64_gradient(x):
    softplus = np.logaddexp(0.0, x)
    sigmoid = 0.5 * (1.0 + np.tanh(0.5 * x))
    return np.tanh(softplus) + x * (1.0 - np.tanh(softplus) ** 2) * sigmoid


def _value_and_gradient(fn, x):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = fn(x)
    return y.numpy(), tape.gradient(y, x).numpy()


WIDE = np.concatenate([-np.logspace(-4, 3, 60)[::-1], [0.0], np.logspace(-4, 3, 60)])


def test_mish_is_keras_builtin_and_activation_string_resolves_to_it():
    """Our choice (reuse Keras' mish): the re-export, the string and our layer's function are the same."""
    assert activations.mish is keras.activations.mish
    assert keras.activations.get("mish") is keras.activations.mish
    assert keras.layers.Dense(2, activation="mish").activation is activations.mish


def _mish_layer(dtype):
    return layers.Mish(dtype=dtype)


def _legacy_layer(dtype):
    return saving.legacy_mish.from_config({"name": "Mish", "activation": "mish", "dtype": dtype})


def _legacy_function(dtype):
    return saving.legacy_mish


# Our three ways to Mish: the layer, the tf.keras 2 "Mish" name as a layer, and as a function.
MISH_ENTRY_POINTS = {"layers.Mish": _mish_layer, "legacy Mish layer": _legacy_layer,
                     "legacy mish function": _legacy_function}


@pytest.mark.parametrize("make", MISH_ENTRY_POINTS.values(), ids=MISH_ENTRY_POINTS.keys())
def test_our_mish_entry_points_match_the_float64_formula_in_float32(make):
    x = np.linspace(-30, 30, 241)
    y, g = _value_and_gradient(make("float32"), x.astype("float32"))
    assert y.dtype == "float32"
    np.testing.assert_allclose(y, _mish64(x), rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(g, _mish64_gradient(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("make", MISH_ENTRY_POINTS.values(), ids=MISH_ENTRY_POINTS.keys())
def test_our_mish_entry_points_are_finite_up_to_1e3(make, dtype):
    y, g = _value_and_gradient(make(dtype), WIDE.astype(dtype))
    assert y.dtype == dtype and g.dtype == dtype
    assert np.isfinite(y).all() and np.isfinite(g).all()
    far = np.abs(WIDE) == 1e3
    np.testing.assert_array_equal(y[far], np.where(WIDE[far] > 0, 1e3, 0.0))
    np.testing.assert_array_equal(g[far], np.where(WIDE[far] > 0, 1.0, 0.0))
    tolerance = 1e-2 if dtype == "float16" else 1e-5
    np.testing.assert_allclose(y, _mish64(WIDE.astype(dtype).astype("float64")), rtol=tolerance, atol=tolerance)


def test_hard_mish_piecewise_formula_and_gradient():
    x = np.array([-1000.0, -3.0, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 2.0, 1000.0], "float32")
    expected = [0.0, 0.0, 0.0, -0.375, -0.5, -0.375, 0.0, 0.5, 2.0, 1000.0]
    # At the kink x = -2 the gradient is the right derivative (x + 1 = -1), as with torch's clamp.
    expected_gradient = [0.0, 0.0, -1.0, -0.5, 0.0, 0.5, 1.0, 1.0, 1.0, 1.0]
    y, g = _value_and_gradient(activations.hard_mish, x)
    np.testing.assert_array_equal(y, expected)
    np.testing.assert_array_equal(g, expected_gradient)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_hard_mish_keeps_dtype_and_is_finite(dtype):
    y, g = _value_and_gradient(activations.hard_mish, WIDE.astype(dtype))
    assert y.dtype == dtype and np.isfinite(y).all() and np.isfinite(g).all()


def _hard_mish64(x):
    """timm's formula in float64, at its limits for infinite inputs (0 at -inf, x at +inf)."""
    x = np.asarray(x, "float64")
    with np.errstate(invalid="ignore"):
        return np.where(x >= 0, x, np.where(x < -2, 0.0, x * np.clip(x + 2, 0, 2) / 2))


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_hard_mish_at_the_ends_of_the_dtypes_range_and_infinities(dtype):
    largest = float(np.finfo(dtype).max)
    x = np.array([-np.inf, -largest, -1e4, -2.0, -1.0, -0.5, 0.0, 1.0, 300.0, 4e4, largest, np.inf], dtype)
    y, g = _value_and_gradient(activations.hard_mish, x)
    assert y.dtype == dtype
    np.testing.assert_array_equal(y, _hard_mish64(x.astype("float64")).astype(dtype))
    np.testing.assert_array_equal(g, [0.0, 0.0, 0.0, -1.0, 0.0, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])


def test_hard_mish_is_registered_and_round_trips_in_a_layer_config():
    assert keras.saving.get_registered_name(activations.hard_mish) == "keras_trainx>hard_mish"
    layer = keras.layers.Dense(3, activation=activations.hard_mish)
    config = json.loads(json.dumps(keras.saving.serialize_keras_object(layer)))
    assert config["config"]["activation"]["config"] == "keras_trainx>hard_mish"
    assert keras.saving.deserialize_keras_object(config).activation is activations.hard_mish
