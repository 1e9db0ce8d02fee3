"""What a trial run changes in a model, captured and put back bit for bit.

The planning tools train for real (a learning-rate sweep, memory probes) and must leave the user's
model as they found it: its weights (trainable and not, and the seed states of layers such as
`RandomTranslation` or `Dropout`), its optimizer's variables (`iterations`, a learning-rate
variable, momentum and other slots), its metrics' totals, and the attributes `Model.fit` sets
(`stop_training`, `history`).
"""

from typing import Any

import keras
import numpy as np

#: Model attributes `Model.fit` sets on every run.
_FIT_ATTRIBUTES = ("stop_training", "history")


class TrainingState:
    """The values of a model's variables, its metrics' and an optimizer's, restorable bit for bit.

    Args:
        model: a built, compiled `keras.Model`.
        optimizer: the optimizer whose variables to capture (usually `model.optimizer`). Variables
            created after the capture (an optimizer built later) are not covered: capture once
            `Model.fit` has built everything (`CaptureOnTrainBegin`).

    Example:

    >>> import numpy as np, keras
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> model.compile(optimizer="sgd", loss="mse")
    >>> state = TrainingState(model, model.optimizer)
    >>> _ = model.fit(np.ones((4, 2)), np.ones((4, 1)), verbose=0)
    >>> [path.split("/")[-1] for path in state.differences()]
    ['kernel', 'bias', 'total', 'count', 'iteration']
    >>> state.restore()
    >>> state.differences()
    []
    """

    def __init__(self, model: keras.Model, optimizer: keras.optimizers.Optimizer) -> None:
        variables = [*model.variables, *model.metrics_variables, *optimizer.variables]
        self.variables = list({id(v): v for v in variables}.values())
        self.values = [np.array(v.numpy(), copy=True) for v in self.variables]

    def restore(self) -> None:
        """Assigns every captured value back."""
        for variable, value in zip(self.variables, self.values):
            variable.assign(value)

    def differences(self) -> list[str]:
        """The paths of the captured variables whose value differs now (empty when all are equal)."""
        return [v.path for v, value in zip(self.variables, self.values)
                if not np.array_equal(np.asarray(v.numpy()), value)]


class CaptureOnTrainBegin(keras.callbacks.Callback):
    """Captures `TrainingState(model, optimizer)` when the first `Model.fit` it joins begins training.

    `Model.fit` builds the model, its metrics and its optimizer before `on_train_begin`, so the
    capture covers every variable a training step touches, also for a model that was not built.
    Pass the same callback to several runs to keep the state from before the first.

    Args:
        optimizer: the optimizer whose variables to capture (the user's, even while another one
            trains).
    """

    def __init__(self, optimizer: keras.optimizers.Optimizer) -> None:
        super().__init__()
        self.optimizer = optimizer
        self.state: TrainingState | None = None

    def on_train_begin(self, logs: dict | None = None) -> None:
        if self.state is None:
            self.state = TrainingState(self.model, self.optimizer)

    def restore(self) -> None:
        """Restores the captured state (nothing was trained if none was captured)."""
        if self.state is not None:
            self.state.restore()


def fit_attributes(model: keras.Model) -> dict[str, Any]:
    """The attributes `Model.fit` will overwrite (`stop_training`, `history`), as they are now."""
    return {name: getattr(model, name) for name in _FIT_ATTRIBUTES if hasattr(model, name)}


def restore_fit_attributes(model: keras.Model, saved: dict[str, Any]) -> None:
    """Puts back the attributes `fit_attributes` returned (removing those the model did not have)."""
    for name in _FIT_ATTRIBUTES:
        if name in saved:
            setattr(model, name, saved[name])
        elif hasattr(model, name):
            delattr(model, name)
