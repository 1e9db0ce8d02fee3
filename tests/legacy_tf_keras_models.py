"""Builds real tf.keras 2 (tf_keras) models that old projects saved, for tests/test_saving.py.

Run as `python legacy_tf_keras_models.py OUTDIR` (a separate process: tf_keras and Keras 3 are not
mixed in one process). Writes, with predictions on `x.npy` as `NAME.npy`:
- recipe.h5: the well-known recipe, `class Mish(Activation)` registered with
  `get_custom_objects().update({"Mish": Mish(mish)})`, used as `Dense(activation="Mish")`,
  `Activation("Mish")` and as a layer `Mish(mish)(x)`;
- function.h5: a function named `Mish` registered under "Mish", used as `activation="Mish"`;
- lowercase.h5: the `{"mish": mish}` recipe;
- unknown.h5: the recipe plus a custom layer `Scaler` that nobody else knows;
- savedmodel/: a TensorFlow SavedModel directory (`save_format="tf"`).
"""

import os
import sys

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402
from tf_keras.layers import Activation, Dense, Input  # noqa: E402
from tf_keras.utils import get_custom_objects  # noqa: E402


def mish(x):
    return x * tf.math.tanh(tf.math.softplus(x))


class Mish(Activation):
    def __init__(self, activation, **kwargs):
        super().__init__(activation, **kwargs)
        self.__name__ = "Mish"


def Mish_function(x):  # noqa: N802  (saved under the name "Mish")
    return x * tf.math.tanh(tf.math.softplus(x))


Mish_function.__name__ = "Mish"


class Scaler(tf_keras.layers.Layer):
    def call(self, x):
        return 2.0 * x


def build(hidden_activation, extra=None):
    tf_keras.utils.set_random_seed(0)
    inputs = Input((5,))
    h = Dense(8, activation=hidden_activation)(inputs)
    h = Activation(hidden_activation)(h)
    if extra is not None:
        h = extra(h)
    return tf_keras.Model(inputs, Dense(3)(h))


def main(out):
    x = np.linspace(-3, 3, 20, dtype="float32").reshape(4, 5)
    np.save(os.path.join(out, "x.npy"), x)
    models = {}
    get_custom_objects().update({"Mish": Mish(mish)})
    models["recipe"] = build("Mish", extra=Mish(mish))
    models["unknown"] = build("Mish", extra=Scaler())
    get_custom_objects().clear()
    get_custom_objects().update({"Mish": Mish_function})
    models["function"] = build("Mish")
    get_custom_objects().clear()
    get_custom_objects().update({"mish": mish})
    models["lowercase"] = build(mish)
    for name, model in models.items():
        model.compile(optimizer="adam", loss="mse")
        model.save(os.path.join(out, f"{name}.h5"))
        np.save(os.path.join(out, f"{name}.npy"), model.predict(x, verbose=0))
    models["lowercase"].save(os.path.join(out, "savedmodel"), save_format="tf")


if __name__ == "__main__":
    main(sys.argv[1])
