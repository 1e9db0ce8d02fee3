"""keras_trainx: exact gradient accumulation, tf.distribute helpers, schedules, Mish and
albumentations generators for Keras 3 (TensorFlow backend)."""

import keras

if keras.backend.backend() != "tensorflow":
    raise ImportError(
        "keras_trainx needs Keras' TensorFlow backend; this process uses "
        f"{keras.backend.backend()!r}. Set KERAS_BACKEND=tensorflow before importing keras."
    )

from keras_trainx.fit import fit_accumulated  # noqa: E402
from keras_trainx import activations, layers, schedules  # noqa: E402
from keras_trainx.saving import custom_objects, load_model  # noqa: E402
from keras_trainx.data import AugmentedSequence  # noqa: E402
from keras_trainx import distribute  # noqa: E402
from keras_trainx import planning  # noqa: E402
