"""keras_trainx: exact gradient accumulation, tf.distribute helpers, schedules, Mish and
albumentations generators for Keras 3 (TensorFlow backend).

The public names load on first use (PEP 562 `__getattr__`): `import keras_trainx` imports neither
Keras nor TensorFlow, so that processes which need only part of the package (the worker processes
of `AugmentedSequence(..., use_multiprocessing=True)`, `keras-trainx --help`) stay light. Keras'
backend is checked when a public name first loads Keras, and at import if Keras is already loaded.
"""

import importlib
import sys
from typing import TYPE_CHECKING, Any

from keras_trainx import _moved
from keras_trainx._version import __version__

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


if "keras" in sys.modules:
    _check_backend()
_moved.install()
