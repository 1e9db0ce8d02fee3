"""Imports of optional dependencies, each failing with the `pip install` line that brings it.

The core (`fit_accumulated`, schedules, activations, saving, distribute) needs only TensorFlow, Keras
and NumPy. Everything else is an extra of `setup.cfg`; a missing one is reported by this module.
"""

import importlib
from types import ModuleType

#: The extra of `setup.cfg` that installs each optional module.
EXTRA_OF_MODULE = {
    "albumentations": "augment",
    "cv2": "augment",
    "tensorflow_datasets": "tfds",
    "sklearn": "demo",
    "matplotlib": "plot",
    "pandas": "dataframe",
}


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the extra that installs it."""


def require(module_name: str, purpose: str) -> ModuleType:
    """Imports and returns `module_name`, or raises `MissingExtraError` (an `ImportError`) naming
    the extra to install.

    Args:
        module_name: the importable name, a key of `EXTRA_OF_MODULE` (or a submodule of one).
        purpose: what needs it, for the message, e.g. `"AugmentedSequence"`.

    Example:

    >>> require("numpy", "this example").__name__
    'numpy'
    """
    try:
        return importlib.import_module(module_name)
    except ImportError as error:
        extra = EXTRA_OF_MODULE.get(module_name.split(".")[0])
        install = f"pip install 'keras_trainx[{extra}]'" if extra else f"pip install {module_name}"
        raise MissingExtraError(
            f"{purpose} needs the optional package {module_name!r}, which is not installed: "
            f"{install}"
        ) from error
