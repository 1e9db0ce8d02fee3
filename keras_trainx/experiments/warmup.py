"""Warm-up at large effective batch: the sweep behind Goyal et al.'s table, on digits and 2 CPU cores.

Goyal et al. (2017) trained with SGD at a learning rate scaled linearly with the batch, lr = 0.1 *
B / 128, and showed that beyond some batch size the first updates wreck the network unless the rate
is warmed up. Here the same recipe runs on scikit-learn's digits with a small BatchNorm CNN:
micro-batches of 64 accumulated into effective batches B by `fit_accumulated` (so BatchNorm always
sees 64 samples, and only the update size changes), peak rate `base_learning_rate * B /
base_batch_size`, an exponential warm-up from `warmup_start` of the peak, and /10 decays at fixed
fractions of the run.
"""

import time
from collections.abc import Sequence
from typing import Any

import keras

from keras_trainx.experiments.digits import TRAIN_SIZE, build_cnn, load_digits_standardized
from keras_trainx.experiments.progress import ProgressBar
from keras_trainx.accumulation.fit import fit_accumulated
from keras_trainx.schedules import MultiStepDecay, WarmUp, epochs_to_steps, updates_per_epoch
from keras_trainx.validation import check_bool, check_choice, check_float, check_int

#: The full sweep (the README's table): fine steps where no-warm-up training breaks down.
FULL: dict[str, Any] = {"batch_sizes": (64, 128, 256, 320, 384, 448, 512, 768, 1024), "seeds": (0, 1, 2), "epochs": 60}
#: A few minutes on 2 cores: a small batch, one in the window where warm-up matters, one too large.
QUICK: dict[str, Any] = {"batch_sizes": (64, 384, 1024), "seeds": (0,), "epochs": 30}


def warmup_schedule(batch_size: int, updates_per_epoch: int, *, epochs: int, warmup: bool,
                    base_learning_rate: float = 0.1, base_batch_size: int = 8, warmup_epochs: int = 5,
                    warmup_start: float = 0.01, staircase: bool = False, decay_at: Sequence[float] = (0.6, 0.85),
                    decay_factor: float = 0.1) -> keras.optimizers.schedules.LearningRateSchedule:
    """Returns the sweep's learning-rate schedule for one effective batch size.

    The peak rate is `base_learning_rate * batch_size / base_batch_size` (the linear scaling
    rule); it is multiplied by `decay_factor` at the fractions `decay_at` of the run (absolute
    epochs, rounded to the nearest update). With `warmup`, the first `warmup_epochs` rise
    geometrically from `warmup_start` of the peak (once per epoch with `staircase=True`, as in the
    article; at every update otherwise).

    Args:
        batch_size: the effective batch size (micro-batch x `accum_steps`).
        updates_per_epoch: optimizer updates per epoch of the fit
            (`keras_trainx.schedules.updates_per_epoch`).
        epochs: length of the run.
        warmup: whether to warm up.
        base_learning_rate, base_batch_size: the scaling rule's reference point.
        warmup_epochs, warmup_start, staircase: the warm-up (see above).
        decay_at: strictly increasing fractions of the run in (0, 1), after the warm-up (at least
            one).
        decay_factor: the multiplier at each of them.

    Example:

    >>> from keras_trainx.experiments import warmup_schedule
    >>> schedule = warmup_schedule(384, 4, epochs=60, warmup=True, staircase=True)
    >>> decay = schedule.after
    >>> round(decay.initial_learning_rate, 9), decay.milestones, schedule.warmup_steps
    (4.8, [144, 204], 20)
    """
    epochs = check_int("epochs", epochs, minimum=1)
    check_bool("warmup", warmup)
    peak = base_learning_rate * batch_size / base_batch_size
    milestones = epochs_to_steps([fraction * epochs for fraction in decay_at], updates_per_epoch)
    decay = MultiStepDecay(peak, milestones, factor=decay_factor)
    if not warmup:
        return decay
    return WarmUp(
        decay, warmup_steps=epochs_to_steps(warmup_epochs, updates_per_epoch), mode="exponential",
        initial_fraction=warmup_start, staircase_steps=updates_per_epoch if staircase else None,
        offset=False,
    )


def check_warmup_sweep(batch_sizes: Sequence[int] = FULL["batch_sizes"], seeds: Sequence[int] = FULL["seeds"], *,
                       epochs: int = FULL["epochs"], micro_batch: int = 64, base_learning_rate: float = 0.1,
                       base_batch_size: int = 8, warmup_epochs: int = 5, warmup_start: float = 0.01,
                       staircase: bool = False, decay_at: Sequence[float] = (0.6, 0.85), decay_factor: float = 0.1,
                       momentum: float = 0.9, weight_decay: float = 5e-4, remainder: str = "apply",
                       progress: bool = True) -> dict[str, Any]:
    """Checks `warmup_sweep`'s arguments without training; returns them as keyword arguments.

    Raises `TypeError` for a value of the wrong type and `ValueError` for one out of range, naming
    the argument: a batch size that is not a multiple of `micro_batch`, a warm-up as long as the
    run or reaching a decay, a `remainder="drop"` run that would make no update, and so on.

    Example:

    >>> from keras_trainx.experiments import check_warmup_sweep
    >>> check_warmup_sweep([64, 100])
    Traceback (most recent call last):
    ...
    ValueError: `batch_sizes[1]` must be a multiple of micro_batch=64 (the effective batch is micro_batch x accum_steps); received batch_sizes[1]=100.
    """
    micro_batch = check_int("micro_batch", micro_batch, minimum=1)
    batch_sizes = _int_list("batch_sizes", batch_sizes, minimum=micro_batch)
    for i, batch_size in enumerate(batch_sizes):
        if batch_size % micro_batch:
            raise ValueError(
                f"`batch_sizes[{i}]` must be a multiple of micro_batch={micro_batch} (the effective "
                f"batch is micro_batch x accum_steps); received batch_sizes[{i}]={batch_size}."
            )
    if any(b <= a for a, b in zip(batch_sizes, batch_sizes[1:])):
        raise ValueError(f"`batch_sizes` must be strictly increasing; received batch_sizes={batch_sizes}.")
    seeds = _int_list("seeds", seeds, minimum=0)
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"`seeds` must be distinct; received seeds={seeds}.")
    epochs = check_int("epochs", epochs, minimum=1)
    warmup_epochs = check_int("warmup_epochs", warmup_epochs, minimum=1, maximum=epochs - 1,
                              hint="The warm-up must end before the run does.")
    remainder = check_choice("remainder", remainder, ("apply", "drop"))
    for batch_size in batch_sizes:
        updates_per_epoch(TRAIN_SIZE, micro_batch, accum_steps=batch_size // micro_batch,
                          remainder=remainder)
    return {
        "batch_sizes": batch_sizes,
        "seeds": seeds,
        "epochs": epochs,
        "micro_batch": micro_batch,
        "base_learning_rate": check_float("base_learning_rate", base_learning_rate, minimum=0.0,
                                          exclusive_minimum=True),
        "base_batch_size": check_int("base_batch_size", base_batch_size, minimum=1),
        "warmup_epochs": warmup_epochs,
        "warmup_start": check_float("warmup_start", warmup_start, minimum=0.0, maximum=1.0,
                                    exclusive_minimum=True),
        "staircase": check_bool("staircase", staircase),
        "decay_at": _check_decay_at(decay_at, warmup_epochs, epochs),
        "decay_factor": check_float("decay_factor", decay_factor, minimum=0.0, maximum=1.0,
                                    exclusive_minimum=True),
        "momentum": check_float("momentum", momentum, minimum=0.0, maximum=1.0, exclusive_maximum=True),
        "weight_decay": check_float("weight_decay", weight_decay, minimum=0.0),
        "remainder": remainder,
        "progress": check_bool("progress", progress),
    }


def warmup_sweep(batch_sizes: Sequence[int] = FULL["batch_sizes"], seeds: Sequence[int] = FULL["seeds"],
                 **options: Any) -> list[dict[str, Any]]:
    """Trains the digits CNN at each effective batch size, with and without warm-up, per seed.

    Each run: `keras.utils.set_random_seed(seed)`, a fresh `build_cnn()`, `SGD(schedule, momentum,
    weight_decay)` with the schedule of `warmup_schedule`, `fit_accumulated(batch_size=micro_batch,
    accum_steps=B // micro_batch, remainder=remainder, epochs=epochs)` on the 1,437 training
    digits, then the test accuracy on the 360 others. Every argument is checked (by
    `check_warmup_sweep`) before the first run.

    Args:
        batch_sizes: effective batch sizes, multiples of `micro_batch`, strictly increasing.
        seeds: distinct ints >= 0.
        epochs: epochs per run (default 60).
        micro_batch: the micro-batch size, what BatchNorm sees (default 64).
        base_learning_rate, base_batch_size: peak rate = `base_learning_rate * B / base_batch_size`
            (defaults 0.1 and 8).
        warmup_epochs: int >= 1, shorter than the run and ending before the first decay (default 5).
        warmup_start: fraction of the peak where the warm-up starts, in (0, 1] (default 0.01).
        staircase: raise the warm-up rate once per epoch instead of at every update (default False).
        decay_at: strictly increasing fractions of the run in (0, 1) where the rate is multiplied
            by `decay_factor` (defaults (0.6, 0.85) and 0.1).
        momentum: SGD momentum in [0, 1) (default 0.9).
        weight_decay: SGD weight decay >= 0 (default 5e-4).
        remainder: `fit_accumulated`'s `remainder`, `"apply"` (default) or `"drop"`.
        progress: write a progress bar to stderr (default True).

    Returns:
        A list of dicts, one per run, in the order run: `batch_size`, `accum_steps`, `warmup`
        (bool), `seed`, `peak_learning_rate`, `updates` (the optimizer's step count at the end),
        `train_loss` (of the last epoch), `test_accuracy`, `seconds`.

    Example (2 short runs):

    >>> from keras_trainx.experiments import warmup_sweep
    >>> rows = warmup_sweep([128], [0], epochs=2, warmup_epochs=1, decay_at=[0.75], progress=False)
    >>> [(r["batch_size"], r["accum_steps"], r["warmup"], r["updates"]) for r in rows]
    [(128, 2, True, 24), (128, 2, False, 24)]
    """
    options = check_warmup_sweep(batch_sizes, seeds, **options)
    batch_sizes, seeds = options.pop("batch_sizes"), options.pop("seeds")
    progress = options.pop("progress")
    data = load_digits_standardized()
    runs = [(b, w, s) for b in batch_sizes for s in seeds for w in (True, False)]
    bar = ProgressBar(len(runs)) if progress else None
    rows = []
    for batch_size, warmup, seed in runs:
        label = f"B={batch_size} {'warm-up' if warmup else 'no warm-up'} seed {seed}"
        rows.append(_train(batch_size, warmup, seed, data, **options))
        if bar:
            bar.finish(f"{label}: test accuracy {rows[-1]['test_accuracy']:.3f}")
    return rows


def _train(batch_size: int, warmup: bool, seed: int, data: tuple, *, epochs: int, micro_batch: int, momentum: float,
           weight_decay: float, remainder: str, **settings: Any) -> dict[str, Any]:

    x_train, y_train, x_test, y_test = data
    accum_steps = batch_size // micro_batch
    per_epoch = updates_per_epoch(len(x_train), micro_batch, accum_steps=accum_steps, remainder=remainder)
    schedule = warmup_schedule(batch_size, per_epoch, epochs=epochs, warmup=warmup, **settings)
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    model = build_cnn()
    model.compile(
        optimizer=keras.optimizers.SGD(schedule, momentum=momentum, weight_decay=weight_decay),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    began = time.monotonic()
    history = fit_accumulated(
        model, x_train, y_train, batch_size=micro_batch, accum_steps=accum_steps,
        remainder=remainder, epochs=epochs, verbose=0,
    )
    _, accuracy = model.evaluate(x_test, y_test, batch_size=len(x_test), verbose=0)
    return {
        "batch_size": batch_size,
        "accum_steps": accum_steps,
        "warmup": warmup,
        "seed": seed,
        "peak_learning_rate": settings["base_learning_rate"] * batch_size / settings["base_batch_size"],
        "updates": int(keras.ops.convert_to_numpy(model.optimizer.iterations)),
        "train_loss": float(history.history["loss"][-1]),
        "test_accuracy": float(accuracy),
        "seconds": time.monotonic() - began,
    }


def _int_list(name: str, values: Any, minimum: int) -> list[int]:
    if not isinstance(values, (list, tuple)):
        raise TypeError(f"`{name}` must be a list of ints; received {name}={values!r}.")
    if not values:
        raise ValueError(f"`{name}` must not be empty; received {name}={values!r}.")
    return [check_int(f"{name}[{i}]", v, minimum=minimum) for i, v in enumerate(values)]


def _check_decay_at(decay_at: Any, warmup_epochs: int, epochs: int) -> tuple[float, ...]:
    if not isinstance(decay_at, (list, tuple)):
        raise TypeError(f"`decay_at` must be a list of fractions of the run; received decay_at={decay_at!r}.")
    if not decay_at:
        raise ValueError(f"`decay_at` must not be empty; received decay_at={decay_at!r}.")
    fractions = [check_float(f"decay_at[{i}]", f, minimum=0.0, maximum=1.0, exclusive_minimum=True,
                             exclusive_maximum=True) for i, f in enumerate(decay_at)]
    if any(b <= a for a, b in zip(fractions, fractions[1:])):
        raise ValueError(f"`decay_at` must be strictly increasing; received decay_at={fractions}.")
    if fractions[0] * epochs <= warmup_epochs:
        raise ValueError(
            f"The first decay (epoch {fractions[0] * epochs:g} of {epochs}) must come after the "
            f"warm-up ({warmup_epochs} epochs); received decay_at={fractions}."
        )
    return tuple(fractions)
