"""Image data for Keras: `AugmentedSequence` (albumentations on `PyDataset`), `to_tf_dataset`, and
`EpochCallback`/`epoch_callbacks`, which tell a sequence the epoch `fit` runs.

The names load on first use (PEP 562 `__getattr__`), so that the worker processes of
`use_multiprocessing=True` import the batch-building modules of this package without Keras.
"""

import importlib
from typing import TYPE_CHECKING, Any

PUBLIC = {
    "EpochCallback": "keras_trainx.data.epochs",
    "epoch_callbacks": "keras_trainx.data.epochs",
    "AugmentedSequence": "keras_trainx.data.sequence",
    "to_tf_dataset": "keras_trainx.data.tf_dataset",
}

__all__ = list(PUBLIC)

if TYPE_CHECKING:
    from keras_trainx.data.epochs import EpochCallback, epoch_callbacks
    from keras_trainx.data.sequence import AugmentedSequence
    from keras_trainx.data.tf_dataset import to_tf_dataset


def __getattr__(name: str) -> Any:
    if name not in PUBLIC:
        raise AttributeError(f"module 'keras_trainx.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(PUBLIC))
