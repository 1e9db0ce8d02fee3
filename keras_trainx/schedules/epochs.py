"""Schedules stated in epochs: how many optimizer updates `fit_accumulated` makes per epoch.

Learning-rate schedules count optimizer updates. Under gradient accumulation an epoch of `N` samples
in micro-batches of `batch_size` has `ceil(N / batch_size)` micro-batches, grouped into windows of
`accum_steps`; each window is one update, and the last window of an epoch may be shorter.
`fit_accumulated(remainder="apply")` applies that short window as an update of its own,
`remainder="drop"` discards it. With an accumulation schedule (`accum_steps={epoch: k}`) each
epoch has its own count. These helpers do that arithmetic once, so a schedule can be written in
epochs.
"""

import math
import numbers
from collections.abc import Sequence
from typing import overload

from keras_trainx.schedules.accumulation import AccumulationSchedule, as_accumulation_schedule
from keras_trainx.validation import check_choice, check_float, check_int

REMAINDERS = ("apply", "drop")


@overload
def updates_per_epoch(num_samples: int | None = None, batch_size: int | None = None, *, accum_steps: int = 1,
                      remainder: str = "apply", steps_per_epoch: int | None = None,
                      epochs: None = None) -> int: ...


@overload
def updates_per_epoch(num_samples: int | None = None, batch_size: int | None = None, *,
                      accum_steps: int | dict[int, int] | AccumulationSchedule = 1, remainder: str = "apply",
                      steps_per_epoch: int | None = None, epochs: int) -> list[int]: ...


def updates_per_epoch(num_samples: int | None = None, batch_size: int | None = None, *,
                      accum_steps: int | dict[int, int] | AccumulationSchedule = 1, remainder: str = "apply",
                      steps_per_epoch: int | None = None, epochs: int | None = None) -> int | list[int]:
    """Returns the number of optimizer updates `fit_accumulated` makes in one epoch (or in each).

    ```python
    micro_batches = steps_per_epoch or ceil(num_samples / batch_size)
    if remainder == "apply":
        return ceil(micro_batches / accum_steps)   # a short last window is an update too
    return micro_batches // accum_steps            # "drop": only full windows
    ```

    Pass either `num_samples` and `batch_size` (array inputs) or `steps_per_epoch` (the micro-batches
    per epoch, e.g. `len(py_dataset)`), with the `accum_steps` and `remainder` given to
    `fit_accumulated`. With `validation_split`, `num_samples` is the number of training samples
    left after the split.

    Args:
        num_samples: Python int >= 1. Training samples per epoch.
        batch_size: Python int >= 1. The micro-batch size (`fit_accumulated`'s `batch_size`).
        accum_steps: Python int >= 1, micro-batches per update; or a dict `{epoch: accum_steps}` /
            `AccumulationSchedule`, as given to `fit_accumulated` (then pass `epochs`).
        remainder: `"apply"` or `"drop"`, as given to `fit_accumulated`.
        steps_per_epoch: Python int >= 1. Micro-batches per epoch, instead of `num_samples` and
            `batch_size`.
        epochs: Python int >= 1: return the counts of epochs `0 .. epochs - 1` as a list.

    Returns:
        A Python int >= 1, or a list of them with `epochs`.

    Raises:
        ValueError: if `remainder="drop"` and an epoch holds fewer micro-batches than
            `accum_steps` (no update would ever happen).

    Example:

    >>> from keras_trainx.schedules import updates_per_epoch
    >>> # 1437 samples in micro-batches of 64: 23 micro-batches (the last one of 29 samples);
    >>> # windows of 6 micro-batches: 6 + 6 + 6 + 5
    >>> updates_per_epoch(1437, 64, accum_steps=6)
    4
    >>> updates_per_epoch(1437, 64, accum_steps=6, remainder="drop")
    3
    >>> updates_per_epoch(steps_per_epoch=23, accum_steps=6)
    4
    >>> updates_per_epoch(1437, 64, accum_steps={0: 1, 2: 6}, epochs=4)  # grow the batch at epoch 2
    [23, 23, 4, 4]
    """
    schedule = as_accumulation_schedule(accum_steps)
    if epochs is None and not isinstance(accum_steps, int):
        raise ValueError(
            f"accum_steps={accum_steps!r} changes by epoch: pass `epochs` to get each epoch's count, "
            "e.g. updates_per_epoch(..., accum_steps=schedule, epochs=60)."
        )
    remainder = check_choice("remainder", remainder, REMAINDERS)
    if steps_per_epoch is not None:
        if num_samples is not None or batch_size is not None:
            raise ValueError(
                "Pass either `num_samples` and `batch_size`, or `steps_per_epoch`; received "
                f"num_samples={num_samples!r}, batch_size={batch_size!r}, "
                f"steps_per_epoch={steps_per_epoch!r}."
            )
        micro_batches = check_int("steps_per_epoch", steps_per_epoch, minimum=1)
    else:
        if num_samples is None or batch_size is None:
            raise ValueError(
                "Pass `num_samples` and `batch_size` (or `steps_per_epoch`); received "
                f"num_samples={num_samples!r}, batch_size={batch_size!r}."
            )
        num_samples = check_int("num_samples", num_samples, minimum=1)
        batch_size = check_int("batch_size", batch_size, minimum=1)
        micro_batches = -(-num_samples // batch_size)
    if epochs is None:
        return _updates(micro_batches, schedule.at(0), remainder)
    epochs = check_int("epochs", epochs, minimum=1)
    return [_updates(micro_batches, schedule.at(epoch), remainder) for epoch in range(epochs)]


def _updates(micro_batches: int, accum_steps: int, remainder: str) -> int:
    if remainder == "apply":
        return -(-micro_batches // accum_steps)
    if micro_batches < accum_steps:
        raise ValueError(
            f"An epoch has {micro_batches} micro-batches, fewer than accum_steps={accum_steps}: "
            "with remainder='drop' no update would ever happen. Use remainder='apply' or a "
            "smaller `accum_steps`."
        )
    return micro_batches // accum_steps


@overload
def epochs_to_steps(epochs: float, updates_per_epoch: int | Sequence[int]) -> int: ...


@overload
def epochs_to_steps(epochs: Sequence[float], updates_per_epoch: int | Sequence[int]) -> list[int]: ...


def epochs_to_steps(epochs: float | Sequence[float],
                    updates_per_epoch: int | Sequence[int]) -> int | list[int]:
    """Converts a number of epochs (or a list of them) into optimizer updates.

    `round(epochs * updates_per_epoch)`, rounding halves up, so fractional epochs (a warm-up of
    half an epoch, a milestone at 85% of 30 epochs) land on the nearest update. With a list of
    per-epoch counts (an accumulation schedule), the updates of the whole epochs before `epochs`
    plus the fraction of the next one.

    Args:
        epochs: a Python number >= 0, or a list/tuple of them.
        updates_per_epoch: Python int >= 1, e.g. from `updates_per_epoch(...)`; or the list
            `updates_per_epoch(..., epochs=n)` returns.

    Returns:
        A Python int, or a list of ints for a list/tuple.

    Example:

    >>> import keras_trainx
    >>> from keras_trainx.schedules import epochs_to_steps, updates_per_epoch
    >>> per_epoch = updates_per_epoch(1437, 64, accum_steps=6)  # 4
    >>> decay = keras_trainx.schedules.MultiStepDecay(
    ...     0.1, milestones=epochs_to_steps([36, 51], per_epoch), factor=0.1)
    >>> decay.milestones, epochs_to_steps(2.5, per_epoch)
    ([144, 204], 10)
    >>> epochs_to_steps([1, 2.5], [23, 23, 4, 4])  # 23 | 23 + 23 + 2
    [23, 48]
    """
    if isinstance(updates_per_epoch, (list, tuple)):
        if not updates_per_epoch:
            raise ValueError("`updates_per_epoch` is an empty list; pass at least one epoch's count.")
        counts = [check_int(f"updates_per_epoch[{i}]", c, minimum=1) for i, c in enumerate(updates_per_epoch)]
    else:
        counts = [check_int("updates_per_epoch", updates_per_epoch, minimum=1)]
    if isinstance(epochs, (list, tuple)):
        return [_to_steps(f"epochs[{i}]", e, counts) for i, e in enumerate(epochs)]
    if not isinstance(epochs, numbers.Real) or isinstance(epochs, bool):
        raise TypeError(
            f"`epochs` must be a number or a list of numbers; received epochs={epochs!r} of type "
            f"{type(epochs).__name__}."
        )
    return _to_steps("epochs", epochs, counts)


def _to_steps(name: str, epochs: object, counts: list[int]) -> int:
    """`epochs` in updates: one count for every epoch, or each epoch's count in `counts`."""
    if len(counts) == 1:
        epochs = check_float(name, epochs, minimum=0.0)
        return int(math.floor(epochs * counts[0] + 0.5))
    epochs = check_float(name, epochs, minimum=0.0, maximum=float(len(counts)),
                         hint=f"updates_per_epoch lists {len(counts)} epochs.")
    whole = min(int(epochs), len(counts) - 1)
    return int(math.floor(sum(counts[:whole]) + (epochs - whole) * counts[whole] + 0.5))
