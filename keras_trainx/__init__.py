"""keras_trainx: exact gradient accumulation, tf.distribute helpers, schedules, Mish and
albumentations generators for Keras 3 (TensorFlow backend).

Importing the package registers its Keras objects (Mish, the schedules, ...), so that
`keras.models.load_model` finds them whichever of `keras` and `keras_trainx` was imported first.
The public names are looked up on first use (PEP 562 `__getattr__`): the worker processes of
`AugmentedSequence(..., use_multiprocessing=True)` run with `KERAS_TRAINX_BATCH_WORKER=1` in their
environment (`keras_trainx.data.process_launcher` sets it), where importing the package registers
nothing, and so loads neither Keras nor TensorFlow, until a public name is used. Keras' backend is
checked when Keras is loaded.
"""

import importlib
import os
import sys
from typing import TYPE_CHECKING, Any

from keras_trainx import _moved
from keras_trainx._version import __version__

#: In the environment of the worker processes that build batches without Keras (`process_launcher`).
BATCH_WORKER_VARIABLE = "KERAS_TRAINX_BATCH_WORKER"

#: The modules whose import registers Keras objects (`keras.saving.register_keras_serializable`).
REGISTERING = ("activations", "layers", "schedules", "saving")

#: Each public name and the module that defines it (submodules map to themselves).
PUBLIC = {
    "fit_accumulated": "keras_trainx.accumulation",
    "set_loss_divisor": "keras_trainx.accumulation",
    "custom_objects": "keras_trainx.saving",
    "load_model": "keras_trainx.saving",
    "AugmentedSequence": "keras_trainx.data",
    **{name: f"keras_trainx.{name}"
       for name in ("activations", "layers", "schedules", "distribute", "planning", "data")},
}

__all__ = ["__version__", *PUBLIC]

if TYPE_CHECKING:
    from keras_trainx import activations, data, distribute, layers, planning, schedules
    from keras_trainx.accumulation import fit_accumulated, set_loss_divisor
    from keras_trainx.data import AugmentedSequence
    from keras_trainx.saving import custom_objects, load_model


def _check_backend() -> None:
    """Refuses a Keras that runs another backend than TensorFlow."""
    import keras

    if keras.backend.backend() != "tensorflow":
        raise ImportError(
            "keras_trainx needs Keras' TensorFlow backend; this process uses "
            f"{keras.backend.backend()!r}. Set KERAS_BACKEND=tensorflow before importing keras."
        )


def __getattr__(name: str) -> Any:
    if name not in PUBLIC:
        raise AttributeError(f"module 'keras_trainx' has no attribute {name!r}")
    _check_backend()
    module = importlib.import_module(PUBLIC[name])
    value = module if module.__name__ == f"keras_trainx.{name}" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(PUBLIC))


if not os.environ.get(BATCH_WORKER_VARIABLE):
    _check_backend()
    for _module in REGISTERING:
        importlib.import_module(f"keras_trainx.{_module}")
elif "keras" in sys.modules:
    _check_backend()
_moved.install()
