"""The experiments' task: scikit-learn's bundled 8x8 digits and a small BatchNorm CNN.

The digits ship inside the scikit-learn wheel (no download). The split is fixed (stratified, 1,437
training and 360 test images) so that seeds vary only the initialization, the shuffling and the
augmentation.
"""

from typing import Any

import numpy as np

from keras_trainx.extras import require

#: Seed of the fixed train/test split.
SPLIT_SEED = 0
#: Training and test images of the split (of scikit-learn's 1,797 digits).
TRAIN_SIZE, TEST_SIZE = 1437, 360


def load_digits_standardized() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Returns `(x_train, y_train, x_test, y_test)`: 8x8x1 float32 images, standardized.

    Pixels are scaled by the mean and standard deviation of all training pixels.

    Example:

    >>> from keras_trainx.experiments import load_digits_standardized
    >>> x_train, y_train, x_test, y_test = load_digits_standardized()
    >>> x_train.shape, x_test.shape, abs(float(x_train.mean())) < 1e-6, round(float(x_train.std()), 4)
    ((1437, 8, 8, 1), (360, 8, 8, 1), True, 1.0)
    """
    datasets = require("sklearn.datasets", "the digits experiments")
    model_selection = require("sklearn.model_selection", "the digits experiments")
    digits = datasets.load_digits()
    images = digits.images.astype("float64")[..., None]
    x_train, x_test, y_train, y_test = model_selection.train_test_split(
        images, digits.target, test_size=TEST_SIZE, random_state=SPLIT_SEED, stratify=digits.target
    )
    mean, std = x_train.mean(), x_train.std()
    standardize = lambda x: ((x - mean) / std).astype("float32")  # noqa: E731
    return standardize(x_train), y_train.astype("int32"), standardize(x_test), y_test.astype("int32")


def build_cnn(filters: tuple[int, ...] = (32, 32, 64, 64, 128, 128)) -> Any:
    """Returns an uncompiled CNN for 8x8x1 digits: random +-1 px shifts, then conv-BN-ReLU blocks.

    A 2x2 max-pooling follows every second convolution but the last; global average pooling and a
    10-way dense layer (logits) end it.

    Args:
        filters: the filters of each 3x3 convolution (six by default).

    Example:

    >>> import keras
    >>> from keras_trainx.experiments import build_cnn
    >>> model = build_cnn()
    >>> model.output_shape, sum(isinstance(l, keras.layers.Conv2D) for l in model.layers)
    ((None, 10), 6)
    """
    import keras

    layers = [
        keras.Input((8, 8, 1)),
        keras.layers.RandomTranslation(1 / 8, 1 / 8, fill_mode="constant", interpolation="nearest"),
    ]
    for index, width in enumerate(filters):
        layers += [
            keras.layers.Conv2D(width, 3, padding="same", use_bias=False, kernel_initializer="he_normal"),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
        ]
        if index % 2 == 1 and index < len(filters) - 1:
            layers.append(keras.layers.MaxPooling2D())
    layers += [keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10)]
    return keras.Sequential(layers)
