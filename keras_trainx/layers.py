"""Activation layers, for models built from class-based configs: `Mish`, `HardMish`.

Keras has `keras.activations.mish` but no Mish layer; `keras.layers.Activation("mish")` works too,
these give the layer a name of its own in summaries and configs.
"""

from typing import Any

import keras

from keras_trainx import activations


@keras.saving.register_keras_serializable(package="keras_trainx")
class Mish(keras.layers.Layer):
    """Applies `mish(x) = x * tanh(softplus(x))` element-wise (Keras' built-in `keras.activations.mish`).

    Args:
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).

    Example:

    >>> import keras, keras_trainx
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), keras_trainx.layers.Mish()])
    >>> tuple(model(keras.ops.ones((2, 4))).shape)
    (2, 8)
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.supports_masking = True

    def call(self, inputs: Any) -> Any:
        return activations.mish(inputs)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return input_shape


@keras.saving.register_keras_serializable(package="keras_trainx")
class HardMish(keras.layers.Layer):
    """Applies `hard_mish(x) = x * min(max(x + 2, 0), 2) / 2` element-wise.

    Args:
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).

    Example:

    >>> import keras, keras_trainx
    >>> keras_trainx.layers.HardMish()(keras.ops.convert_to_tensor([-3.0, -1.0, 0.5])).numpy().tolist()
    [0.0, -0.5, 0.5]
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.supports_masking = True

    def call(self, inputs: Any) -> Any:
        return activations.hard_mish(inputs)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return input_shape
