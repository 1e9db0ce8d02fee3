"""Grow the batch instead of decaying the rate: Smith et al. (2018) on the digits, with `fit_accumulated`.

Smith, Kindermans, Ying and Le, "Don't Decay the Learning Rate, Increase the Batch Size": the noise
of SGD scales as `learning_rate / batch_size`, so multiplying the batch by `f` at an epoch where one
would divide the rate by `f` trains as well, in fewer updates. Both arms here train the digits CNN
with SGD(momentum) at the same epochs: "decay the rate" keeps micro-batches of 64 as updates and
divides the rate by `factor` at each milestone; "grow the batch" keeps the rate and multiplies the
effective batch by `factor` there, through an accumulation schedule (`accum_steps={epoch: k}`), so
BatchNorm still sees 64 samples and memory stays that of 64.
"""

import csv
import os
import time
from collections.abc import Sequence
from typing import Any

import keras

from keras_trainx.accumulation.fit import fit_accumulated
from keras_trainx.experiments.digits import TRAIN_SIZE, build_cnn, load_digits_standardized
from keras_trainx.experiments.progress import ProgressBar
from keras_trainx.extras import require
from keras_trainx.schedules import AccumulationSchedule, epochs_to_steps, updates_per_epoch
from keras_trainx.validation import check_bool, check_float, check_int

ARMS = ("decay the rate", "grow the batch")
#: The README's table: 3 seeds of 30 epochs.
GROWTH_FULL: dict[str, Any] = {"seeds": (0, 1, 2), "epochs": 30}
#: About a minute on 2 cores: one seed of 12 epochs.
GROWTH_QUICK: dict[str, Any] = {"seeds": (0,), "epochs": 12}
COLUMNS = ("arm", "seed", "updates", "final_batch_size", "test_accuracy", "seconds")


def growth_plan(epochs: int, *, micro_batch: int = 64, learning_rate: float = 0.4, factor: int = 4,
                milestones: Sequence[float] = (0.5, 0.75)) -> dict[str, tuple[AccumulationSchedule, Any]]:
    """Each arm's accumulation schedule and learning rate, for a run of `epochs` epochs.

    Args:
        epochs: the run's length (int >= 2).
        micro_batch: the micro-batch (and the batch of "decay the rate").
        learning_rate: the starting rate of both arms.
        factor: what the rate is divided, or the batch multiplied, by at each milestone (int >= 2);
            the last effective batch, `micro_batch * factor**len(milestones)`, must fit in the
            1,437 training digits.
        milestones: strictly increasing fractions of the run in (0, 1), rounded to whole epochs.

    Returns:
        `{arm: (accum_steps schedule, learning rate or schedule)}`.

    Example:

    >>> plan = growth_plan(20)
    >>> plan["grow the batch"]
    (AccumulationSchedule({0: 1, 10: 4, 15: 16}), 0.4)
    >>> decay = plan["decay the rate"][1]
    >>> decay.boundaries, [round(v, 4) for v in decay.values]
    ([230, 345], [0.4, 0.1, 0.025])
    """
    epochs = check_int("epochs", epochs, minimum=2)
    micro_batch = check_int("micro_batch", micro_batch, minimum=1)
    learning_rate = check_float("learning_rate", learning_rate, minimum=0.0, exclusive_minimum=True)
    factor = check_int("factor", factor, minimum=2)
    if not isinstance(milestones, (list, tuple)) or not milestones:
        raise TypeError(f"`milestones` must be a non-empty list of fractions of the run; received {milestones!r}.")
    at = [round(check_float(f"milestones[{i}]", m, minimum=0.0, maximum=1.0, exclusive_minimum=True,
                            exclusive_maximum=True) * epochs) for i, m in enumerate(milestones)]
    if any(b <= a for a, b in zip([0, *at], at)) or at[-1] >= epochs:
        raise ValueError(
            f"`milestones` must fall on strictly increasing epochs after the first and before the end of {epochs}; "
            f"received milestones={list(milestones)} (epochs {at})."
        )
    final = micro_batch * factor ** len(at)
    if final > TRAIN_SIZE:
        largest = max((f for f in range(2, factor) if micro_batch * f ** len(at) <= TRAIN_SIZE), default=None)
        fix = f"choose factor <= {largest}" if largest else "choose a smaller micro_batch"
        raise ValueError(
            f"`factor` makes the last effective batch {micro_batch} x {factor}**{len(at)} = {final}, more than the "
            f"{TRAIN_SIZE:,} training digits (a window would hold the whole epoch, and its size would not be that "
            f"batch); {fix} or fewer milestones; received factor={factor}.")
    per_epoch = updates_per_epoch(TRAIN_SIZE, micro_batch)
    decay = keras.optimizers.schedules.PiecewiseConstantDecay(
        epochs_to_steps(at, per_epoch), [learning_rate / factor**i for i in range(len(at) + 1)])
    grow = AccumulationSchedule({epoch: factor ** (i + 1) for i, epoch in enumerate(at)})
    return {"decay the rate": (AccumulationSchedule({0: 1}), decay), "grow the batch": (grow, learning_rate)}


def batch_growth_experiment(seeds: Sequence[int] = GROWTH_FULL["seeds"], *, epochs: int = GROWTH_FULL["epochs"],
                            micro_batch: int = 64, learning_rate: float = 0.4, factor: int = 4,
                            milestones: Sequence[float] = (0.5, 0.75), momentum: float = 0.9,
                            weight_decay: float = 5e-4, progress: bool = True) -> list[dict[str, Any]]:
    """Trains both arms of `growth_plan` for each seed; returns one row per run.

    Each run: `keras.utils.set_random_seed(seed)`, a fresh `build_cnn()`, `SGD(rate, momentum,
    weight_decay)`, `fit_accumulated(batch_size=micro_batch, accum_steps=schedule)` on the 1,437
    training digits, then the test accuracy on the 360 others. Arguments are checked first.

    Returns:
        Dicts with `arm`, `seed`, `updates` (the optimizer's step count at the end),
        `final_batch_size`, `test_accuracy` and `seconds`, in the order run.

    Example (2 short runs):

    >>> rows = batch_growth_experiment([0], epochs=2, milestones=[0.5], progress=False)
    >>> [(r["arm"], r["updates"], r["final_batch_size"]) for r in rows]
    [('decay the rate', 46, 64), ('grow the batch', 29, 256)]
    """
    plan = growth_plan(epochs, micro_batch=micro_batch, learning_rate=learning_rate, factor=factor,
                       milestones=milestones)
    if not isinstance(seeds, (list, tuple)) or not seeds:
        raise TypeError(f"`seeds` must be a non-empty list of ints; received seeds={seeds!r}.")
    seeds = [check_int(f"seeds[{i}]", s, minimum=0) for i, s in enumerate(seeds)]
    momentum = check_float("momentum", momentum, minimum=0.0, maximum=1.0, exclusive_maximum=True)
    weight_decay = check_float("weight_decay", weight_decay, minimum=0.0)
    bar = ProgressBar(len(seeds) * len(ARMS)) if check_bool("progress", progress) else None
    x_train, y_train, x_test, y_test = load_digits_standardized()
    rows = []
    for seed in seeds:
        for arm in ARMS:
            schedule, rate = plan[arm]
            keras.backend.clear_session()
            keras.utils.set_random_seed(seed)
            model = build_cnn()
            model.compile(optimizer=keras.optimizers.SGD(rate, momentum=momentum, weight_decay=weight_decay),
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
            began = time.monotonic()
            fit_accumulated(model, x_train, y_train, batch_size=micro_batch, accum_steps=schedule,
                            epochs=epochs, verbose=0)
            accuracy = float(model.evaluate(x_test, y_test, batch_size=len(x_test), verbose=0)[1])
            rows.append({"arm": arm, "seed": seed,
                         "updates": int(keras.ops.convert_to_numpy(model.optimizer.iterations)),
                         "final_batch_size": micro_batch * schedule.at(epochs - 1),
                         "test_accuracy": accuracy, "seconds": time.monotonic() - began})
            if bar:
                bar.finish(f"{arm} seed {seed}: test accuracy {accuracy:.3f}")
    return rows


def format_growth_table(rows: list[dict[str, Any]]) -> str:
    """The runs as a Markdown table: per arm, updates, final batch, mean test accuracy (per seed), time.

    Example:

    >>> rows = [dict(arm=a, seed=s, updates=u, final_batch_size=b, test_accuracy=t, seconds=10.0)
    ...         for a, s, u, b, t in [("decay the rate", 0, 690, 64, 0.98), ("grow the batch", 0, 403, 1024, 0.97),
    ...                               ("decay the rate", 1, 690, 64, 0.96)]]
    >>> print(format_growth_table(rows))
    | arm | updates | final effective batch | test accuracy | seconds per run |
    |---|---:|---:|---|---:|
    | decay the rate | 690 | 64 | **0.970** (0.980, 0.960) | 10 |
    | grow the batch | 403 | 1024 | **0.970** (0.970) | 10 |
    """
    lines = ["| arm | updates | final effective batch | test accuracy | seconds per run |",
             "|---|---:|---:|---|---:|"]
    for arm in ARMS:
        runs = [row for row in rows if row["arm"] == arm]
        if not runs:
            continue
        accuracies = [row["test_accuracy"] for row in runs]
        mean = sum(accuracies) / len(accuracies)
        seconds = sum(row["seconds"] for row in runs) / len(runs)
        lines.append(f"| {arm} | {runs[0]['updates']} | {runs[0]['final_batch_size']} | **{mean:.3f}** ("
                     + ", ".join(f"{a:.3f}" for a in accuracies) + f") | {seconds:.0f} |")
    return "\n".join(lines)


def write_growth_csv(rows: list[dict[str, Any]], path: str | os.PathLike) -> None:
    """Writes one line per run, with the columns `COLUMNS`."""
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def plot_growth(rows: list[dict[str, Any]]) -> Any:
    """A matplotlib figure: each run's test accuracy against its number of updates, by arm.

    Example:

    >>> figure = plot_growth([dict(arm="grow the batch", seed=0, updates=403, final_batch_size=1024,
    ...                            test_accuracy=0.97, seconds=10.0)])
    >>> [c.get_label() for c in figure.axes[0].collections]
    ['decay the rate', 'grow the batch']
    """
    pyplot = require("matplotlib.pyplot", "plot_growth")
    figure, axes = pyplot.subplots(figsize=(6, 4))
    for arm, color in zip(ARMS, ("tab:red", "tab:blue")):
        runs = [row for row in rows if row["arm"] == arm]
        axes.scatter([r["updates"] for r in runs], [r["test_accuracy"] for r in runs], color=color, label=arm)
    axes.set_xlabel("optimizer updates in the run")
    axes.set_ylabel("test accuracy")
    axes.set_title("Grow the batch vs decay the rate (digits, equal epochs)")
    axes.legend(loc="lower right")
    figure.tight_layout()
    return figure
