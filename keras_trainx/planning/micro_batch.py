"""`find_micro_batch_size()`: the largest micro-batch that trains in memory, for a given effective batch.

Each probe trains one real update with `fit_accumulated` at a candidate micro-batch (two
micro-batches per window, or one when the micro-batch is the whole effective batch), measures the
peak memory (`keras_trainx.planning.memory`) and restores the model, its optimizer and its metrics
bit for bit. A probe fails when TensorFlow raises `tf.errors.ResourceExhaustedError` or when its
peak exceeds the memory budget. Memory grows with the micro-batch and not with `accum_steps`
(one micro-batch at a time), so the search grows the micro-batch by doubling until a probe fails,
then bisects among the divisors of the effective batch between the last size that fitted and the
first that failed: the answer is always an exact split, `micro_batch_size * accum_steps ==
effective_batch_size`.
"""

import dataclasses
import math
import re
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_trainx import fit_accumulated
from keras_trainx.planning.arguments import array_sample_count, check_compiled_model
from keras_trainx.planning.memory import memory_devices, peak_memory, physical_memory, reset_peak_memory, statistics_gap
from keras_trainx.planning.state import CaptureOnTrainBegin, fit_attributes, restore_fit_attributes
from keras_trainx.validation import check_int


@dataclasses.dataclass(frozen=True)
class MicroBatchProbe:
    """One trial update of `find_micro_batch_size`.

    Attributes:
        micro_batch_size: the micro-batch it trained with.
        fits: whether it trained within memory (and within the budget, if one was given).
        peak_memory: the peak it measured, in bytes (largest over the devices), or `None` when it
            ran out of memory, was not run, or the devices' allocator statistics do not count every
            tensor (`keras_trainx.planning.memory.statistics_gap`).
        failure: why it did not fit (`""` when it did).
    """

    micro_batch_size: int
    fits: bool
    peak_memory: int | None
    failure: str


@dataclasses.dataclass(frozen=True)
class MicroBatchPlan:
    """The micro-batch and `accum_steps` for an effective batch, and the probes that chose them.

    Attributes:
        effective_batch_size: the target, `micro_batch_size * accum_steps`.
        micro_batch_size: the largest divisor of the target that trained within memory.
        accum_steps: `effective_batch_size // micro_batch_size`.
        peak_memory: the peak measured at `micro_batch_size`, in bytes, or `None` when the
            devices' allocator statistics do not count every tensor.
        memory_budget: the budget the probes were held to, in bytes, or `None`.
        devices: the devices measured (`"CPU:0"`, `"GPU:0"`, ...).
        probes: every probe, in the order run.
    """

    effective_batch_size: int
    micro_batch_size: int
    accum_steps: int
    peak_memory: int | None
    memory_budget: int | None
    devices: tuple[str, ...]
    probes: tuple[MicroBatchProbe, ...]

    def __str__(self) -> str:
        peak = "not measured" if self.peak_memory is None else f"{self.peak_memory / 2**20:.1f} MiB"
        budget = "" if self.memory_budget is None else f" (budget {self.memory_budget / 2**20:.1f} MiB)"
        trials = ", ".join(f"{p.micro_batch_size} {'fits' if p.fits else p.failure}" for p in self.probes)
        return (f"micro-batch {self.micro_batch_size} x accum_steps {self.accum_steps} = "
                f"{self.effective_batch_size}; peak memory {peak} on {', '.join(self.devices)}{budget}; "
                f"probes: {trials}")


def find_micro_batch_size(
    model: keras.Model,
    x: Any,
    y: Any = None,
    *,
    effective_batch_size: int,
    memory_budget: int | None = None,
) -> MicroBatchPlan:
    """Finds the largest micro-batch that trains in memory and splits `effective_batch_size` exactly.

    Probes micro-batches 1, 2, 4, ... (then `effective_batch_size` itself) until one fails, then
    bisects among the divisors of `effective_batch_size` between the last size that fitted and
    the first that failed; the chosen size is probed (if it was not) to measure its peak memory.
    Under a `tf.distribute` strategy with R replicas every size is a multiple of R (R, 2R, 4R,
    ...), so that each micro-batch splits evenly, and the memory is the largest replica's.
    Every probe is one real update through `fit_accumulated`, after which the model's weights,
    non-trainable and seed variables, optimizer variables, metric totals and the attributes
    `Model.fit` sets are restored bit for bit. A model that was not built yet is built as `fit`
    builds it, and keeps its initial weights.

    A probe that runs out of memory costs about 10 s: TensorFlow's allocator waits that long for
    memory to be freed before it raises (measured on a CPU). On a CPU, running out of memory
    usually ends the process (the operating system's OOM killer) before TensorFlow can raise: give
    a `memory_budget` there. A size whose probe data alone (the samples of its micro-batches)
    would exceed the machine's physical memory is not run: it counts as not fitting.

    Args:
        model: a compiled `keras.Model`, as `fit_accumulated` takes it.
        x, y: a sample of the training data as numpy arrays or tensors (nested structures as
            `Model.fit` takes them); samples are repeated when a probe needs more.
        effective_batch_size: the samples per optimizer update to plan for, an int >= 1 (a
            multiple of the number of replicas under a strategy).
        memory_budget: the most bytes the training may hold at its peak on each device, as
            TensorFlow's allocator counts them (see `keras_trainx.planning.memory`), or `None`
            to stop only at `tf.errors.ResourceExhaustedError`. Refused where the allocator does
            not count every tensor: on a CPU set `TF_CPU_ALLOCATOR_USE_BFC=true` before
            TensorFlow is imported.

    Returns:
        A `MicroBatchPlan` (`micro_batch_size`, `accum_steps`, `peak_memory`, `probes`).

    Raises:
        MemoryError: a micro-batch of 1 (one sample per replica) does not train within memory or
            the budget.
        ValueError: no divisor of `effective_batch_size` but 1 fits while larger micro-batches
            do (a prime effective batch larger than what fits, for example); the sizes between
            the divisors are then probed too, and the message names the largest that trains and
            suggests effective batch sizes that it splits.

    Example:

    >>> import numpy as np, keras, keras_trainx
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    >>> model.compile(optimizer="sgd", loss="mse")
    >>> x, y = np.ones((64, 4), "float32"), np.ones((64, 1), "float32")
    >>> plan = keras_trainx.planning.find_micro_batch_size(model, x, y, effective_batch_size=24)
    >>> plan.micro_batch_size, plan.accum_steps, [p.micro_batch_size for p in plan.probes]
    (24, 1, [1, 2, 4, 8, 16, 24])
    >>> int(model.optimizer.iterations)  # every probe trained one update, and was undone
    0
    """
    check_compiled_model(model, "find_micro_batch_size")
    target = check_int("effective_batch_size", effective_batch_size, minimum=1,
                       hint="It is the number of samples per optimizer update to plan for.")
    if memory_budget is not None:
        memory_budget = check_int("memory_budget", memory_budget, minimum=1,
                                  hint="It is a number of bytes, or None for no budget.")
    samples = array_sample_count(x, y)
    devices = memory_devices(model)
    gap = statistics_gap(devices)
    if memory_budget is not None and gap:
        raise ValueError(
            f"memory_budget needs TensorFlow's allocator statistics of every tensor, and {gap}; received "
            f"memory_budget={memory_budget}. Or pass memory_budget=None.")

    unit = model.distribute_strategy.num_replicas_in_sync
    if target % unit:
        raise ValueError(
            f"`effective_batch_size` must be a multiple of the {unit} replicas of the model's strategy (each "
            f"micro-batch is split evenly across them); received effective_batch_size={target}.")
    prober = _Prober(model, x, y, samples, target, unit, memory_budget, None if gap else devices)
    try:
        chosen = unit * _search(prober, target // unit)
    finally:
        prober.close()
    probes = tuple(prober.probes)
    chosen_probe = next(p for p in probes if p.micro_batch_size == chosen and p.fits)
    return MicroBatchPlan(target, chosen, target // chosen, chosen_probe.peak_memory, memory_budget, devices, probes)


def _search(prober: "_Prober", count: int) -> int:
    """Doubling, then bisection among the divisors of `count`; returns the chosen one.

    `count` is the effective batch in units of `prober.unit` (the replicas), and so is the result.
    """
    size, fitted, failed = 1, 0, None
    while True:
        if not prober.fits(size):
            failed = size
            break
        fitted = size
        if size == count:
            return count
        size = min(2 * size, count)
    if fitted == 0:
        raise MemoryError(
            f"Even a micro-batch of {prober.unit} does not train: {prober.probes[0].failure}. The model does "
            "not fit on this device (or in memory_budget); make it smaller or give it more memory.")
    divisors = _divisors(count)
    between = [d for d in divisors if fitted < d < failed]
    low, high = -1, len(between)
    while high - low > 1:
        middle = (low + high) // 2
        if prober.fits(between[middle]):
            low = middle
        else:
            high = middle
    if low >= 0:
        return between[low]
    below = [d for d in divisors if d <= fitted]
    if below[-1] == 1 and fitted > 1:
        raise ValueError(_no_divisor_message(count, divisors, _largest_fitting(prober, fitted, failed), prober.unit))
    for size in reversed(below):
        if prober.fitted(size) or prober.fits(size):
            return size
    raise MemoryError(f"No micro-batch trains any more, not even {prober.unit}: {prober.probes[-1].failure}.")


def _divisors(count: int) -> list[int]:
    """The divisors of `count`, increasing (pairs up to its square root: 2**31 takes 46,341 steps).

    Example:

    >>> _divisors(12)
    [1, 2, 3, 4, 6, 12]
    """
    small = [d for d in range(1, math.isqrt(count) + 1) if count % d == 0]
    return small + [count // d for d in reversed(small) if d * d != count]


def _largest_fitting(prober: "_Prober", fitted: int, failed: int) -> int:
    """The largest size between `fitted` (fits) and `failed` (does not) that fits, by bisection over
    every size, divisor or not: the size the refusal names as the largest that trains."""
    while failed - fitted > 1:
        middle = (fitted + failed) // 2
        if prober.fits(middle):
            fitted = middle
        else:
            failed = middle
    return fitted


def _no_divisor_message(count: int, divisors: list[int], fitted: int, unit: int) -> str:
    reason = f"{count} is prime" if len(divisors) == 2 else f"its divisors are {', '.join(map(str, divisors))}"
    lower, upper = fitted * (count // fitted), fitted * -(-count // fitted)
    if unit == 1:
        examples = " or ".join(f"{b} = {fitted} x {b // fitted}" for b in dict.fromkeys((lower, upper)))
        return (f"No divisor of effective_batch_size={count} between 2 and {fitted} (the largest micro-batch "
                f"that trained) exists: {reason}. Accumulating {count} micro-batches of 1 would leave that "
                f"memory unused; choose an effective batch size that such a micro-batch divides, e.g. {examples}.")
    examples = " or ".join(f"{unit * b} = {unit * fitted} x {b // fitted}" for b in dict.fromkeys((lower, upper)))
    return (f"effective_batch_size={unit * count} is {unit} replicas x {count}, and no divisor of {count} between 2 "
            f"and {fitted} (the largest micro-batch per replica that trained) exists: {reason}. Accumulating "
            f"{count} micro-batches of one sample per replica would leave that memory unused; choose an effective "
            f"batch size that such a micro-batch divides, e.g. {examples}.")


class _Prober:
    """Runs probes, restoring the model after each; keeps their records in `probes`.

    Sizes are asked for in units of `unit` (the replicas: a micro-batch splits evenly across them).
    """

    def __init__(self, model: keras.Model, x: Any, y: Any, samples: int, target: int, unit: int,
                 memory_budget: int | None, devices: tuple[str, ...] | None) -> None:
        self.model, self.x, self.y, self.samples, self.target = model, x, y, samples, target
        self.unit = unit
        self.memory_budget = memory_budget
        self.devices = devices
        self.sample_bytes = sum(np.asarray(leaf).nbytes // samples for data in (x, y) if data is not None
                                for leaf in tf.nest.flatten(data))
        self.physical_memory = physical_memory()
        self.capture = CaptureOnTrainBegin(model.optimizer)
        self.attributes = fit_attributes(model)
        self.probes: list[MicroBatchProbe] = []

    def fits(self, units: int) -> bool:
        """Trains one update at micro-batch `units * unit`, restores the model, records the probe."""
        size = units * self.unit
        micro_batches = 1 if size == self.target else 2
        data_bytes = size * micro_batches * self.sample_bytes
        if self.physical_memory is not None and data_bytes > self.physical_memory:
            self.probes.append(MicroBatchProbe(size, False, None, (
                f"its data ({size * micro_batches} samples of {self.sample_bytes} bytes, {data_bytes} bytes) "
                f"exceeds the machine's physical memory ({self.physical_memory} bytes); not run")))
            return False
        indices = np.arange(size * micro_batches) % self.samples
        x = tf.nest.map_structure(lambda a: np.asarray(a)[indices], self.x)
        y = None if self.y is None else tf.nest.map_structure(lambda a: np.asarray(a)[indices], self.y)
        if self.devices:
            reset_peak_memory(self.devices)
        try:
            fit_accumulated(self.model, x, y, batch_size=size, accum_steps=micro_batches, epochs=1,
                            shuffle=False, verbose=0, callbacks=[self.capture])
        except tf.errors.ResourceExhaustedError as error:
            probe = MicroBatchProbe(size, False, None, "out of memory: " + _reason(error.message))
        else:
            peak = peak_memory(self.devices) if self.devices else None
            over = self.memory_budget is not None and peak is not None and peak > self.memory_budget
            probe = MicroBatchProbe(size, not over, peak, f"over the memory budget ({peak} bytes)" if over else "")
        finally:
            self.capture.restore()
            restore_fit_attributes(self.model, self.attributes)
        self.probes.append(probe)
        return probe.fits

    def fitted(self, units: int) -> bool:
        """Whether a probe at micro-batch `units * unit` already ran and fitted."""
        return any(p.micro_batch_size == units * self.unit and p.fits for p in self.probes)

    def close(self) -> None:
        """Restores the model (again) after the last probe, also when the search failed."""
        self.capture.restore()
        restore_fit_attributes(self.model, self.attributes)


def _reason(message: str) -> str:
    """The line of a `ResourceExhaustedError` that says what failed ("OOM when allocating ..."),
    without the terminal colour codes Keras adds to errors raised inside a layer."""
    plain = re.sub(r"\x1b\[[0-9;]*m", "", message)
    lines = [line.strip() for line in plain.splitlines() if line.strip()]
    return next((line for line in lines if "OOM" in line), lines[0] if lines else "ResourceExhaustedError")
