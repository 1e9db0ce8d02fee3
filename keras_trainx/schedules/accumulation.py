"""`AccumulationSchedule`: micro-batches per update that change by epoch ("grow the batch").

Smith et al. (2018), "Don't Decay the Learning Rate, Increase the Batch Size": instead of dividing
the learning rate by `f` at an epoch, multiply the batch by `f`. With `fit_accumulated` the batch
grows without more memory: `accum_steps={0: 1, 30: 5, 60: 25}` trains epochs 0-29 with one
micro-batch per update, 30-59 with 5 and 60 on with 25, each epoch exact at its own window size.
The mapping follows PyTorch Lightning's `GradientAccumulationScheduler`: `{epoch: factor}`, epochs
counted from 0, and epochs before the first key use 1.
"""

import math
from collections.abc import Mapping
from typing import Any

from keras_trainx.validation import check_int


class AccumulationSchedule:
    """Micro-batches per update (`accum_steps`) as a function of the epoch.

    Args:
        scheduling: a dict `{epoch: accum_steps}`: from each epoch (int >= 0, counted from 0 as in
            `Model.fit`) on, that many micro-batches (int >= 1) per update, until the next key.
            Epochs before the smallest key use 1.

    Example:

    >>> from keras_trainx.schedules import AccumulationSchedule
    >>> schedule = AccumulationSchedule({2: 4, 5: 8})
    >>> [schedule.at(epoch) for epoch in range(7)]
    [1, 1, 4, 4, 4, 8, 8]
    >>> schedule.factors
    (1, 4, 8)
    """

    def __init__(self, scheduling: Mapping[int, int]) -> None:
        if not isinstance(scheduling, Mapping) or not scheduling:
            raise TypeError(
                "`scheduling` must be a non-empty dict {epoch: accum_steps}, e.g. {0: 1, 10: 4}; "
                f"received scheduling={scheduling!r}."
            )
        checked = {}
        for epoch, factor in scheduling.items():
            epoch = check_int("scheduling key", epoch, minimum=0,
                              hint="Keys are epochs counted from 0, as in Model.fit.")
            checked[epoch] = check_int(f"scheduling[{epoch}]", factor, minimum=1,
                                       hint="Values are micro-batches per update.")
        checked.setdefault(0, 1)
        self.scheduling = dict(sorted(checked.items()))

    def at(self, epoch: int) -> int:
        """The micro-batches per update in `epoch` (counted from 0)."""
        return [factor for start, factor in self.scheduling.items() if start <= epoch][-1]

    @property
    def factors(self) -> tuple[int, ...]:
        """Every `accum_steps` the schedule uses, ascending."""
        return tuple(sorted(set(self.scheduling.values())))

    @property
    def micro_batches_per_call(self) -> int:
        """The least number of micro-batches that holds whole windows of every factor."""
        return math.lcm(*self.factors)

    def get_config(self) -> dict[str, Any]:
        return {"scheduling": dict(self.scheduling)}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AccumulationSchedule) and other.scheduling == self.scheduling

    def __repr__(self) -> str:
        return f"AccumulationSchedule({self.scheduling!r})"


def as_accumulation_schedule(accum_steps: Any) -> AccumulationSchedule:
    """`accum_steps` (an int, a dict `{epoch: accum_steps}` or an `AccumulationSchedule`) as a schedule."""
    if isinstance(accum_steps, AccumulationSchedule):
        return accum_steps
    if isinstance(accum_steps, Mapping):
        return AccumulationSchedule(accum_steps)
    accum_steps = check_int(
        "accum_steps", accum_steps, minimum=1,
        hint="It counts micro-batches per update (1 means no accumulation); a dict "
             "{epoch: accum_steps} changes it by epoch.")
    return AccumulationSchedule({0: accum_steps})
