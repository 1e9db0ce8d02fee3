"""Tables, CSV files and plots of a warm-up sweep's rows (as returned by `warmup_sweep`)."""

import csv
import math
import os
from typing import Any

from keras_trainx.extras import require

#: The columns of a sweep's rows, in CSV order.
COLUMNS = ("batch_size", "accum_steps", "warmup", "seed", "peak_learning_rate", "updates",
           "train_loss", "test_accuracy", "seconds")
#: A run whose test accuracy is below this has collapsed (chance is 0.1 on 10 classes).
COLLAPSE_BELOW = 0.5


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Groups the rows by batch size: the test accuracies with and without warm-up, per seed.

    Returns:
        A list, by increasing batch size, of dicts with `batch_size`, `accum_steps`,
        `peak_learning_rate`, `seeds`, `with_warmup` and `without_warmup` (test accuracies in the
        order of `seeds`; `nan` where a run is missing).

    Example:

    >>> rows = [dict(batch_size=64, accum_steps=1, warmup=w, seed=s, peak_learning_rate=0.8,
    ...              test_accuracy=a) for w, s, a in [(True, 0, 0.9), (False, 0, 0.8), (True, 1, 0.7)]]
    >>> summarize(rows)[0]["with_warmup"], summarize(rows)[0]["without_warmup"]
    ([0.9, 0.7], [0.8, nan])
    """
    groups: dict = {}
    for row in rows:
        group = groups.setdefault(row["batch_size"], {"runs": {}, "row": row})
        group["runs"][(row["warmup"], row["seed"])] = row["test_accuracy"]
    summary = []
    for batch_size in sorted(groups):
        runs, first = groups[batch_size]["runs"], groups[batch_size]["row"]
        seeds = sorted({seed for _, seed in runs})
        summary.append({
            "batch_size": batch_size,
            "accum_steps": first["accum_steps"],
            "peak_learning_rate": first["peak_learning_rate"],
            "seeds": seeds,
            "with_warmup": [runs.get((True, s), math.nan) for s in seeds],
            "without_warmup": [runs.get((False, s), math.nan) for s in seeds],
        })
    return summary


def format_table(rows: list[dict[str, Any]]) -> str:
    """Returns the sweep as a Markdown table in the article's form: accuracy with / without warm-up.

    Each cell holds the mean test accuracy over seeds, then each seed's; `collapsed` counts the
    runs below `COLLAPSE_BELOW` with / without warm-up.

    Example:

    >>> rows = [dict(batch_size=384, accum_steps=6, warmup=w, seed=s, peak_learning_rate=4.8,
    ...              test_accuracy=a)
    ...         for w, s, a in [(True, 0, 0.986), (False, 0, 0.372), (True, 1, 0.958), (False, 1, 0.914)]]
    >>> print(format_table(rows))
    | effective batch | accum_steps | peak lr | with warm-up | without warm-up | collapsed (with / without) |
    |---:|---:|---:|---|---|---|
    | 384 | 6 | 4.8 | **0.972** (0.986, 0.958) | **0.643** (0.372, 0.914) | 0/2 / 1/2 |
    """
    lines = [
        "| effective batch | accum_steps | peak lr | with warm-up | without warm-up | "
        "collapsed (with / without) |",
        "|---:|---:|---:|---|---|---|",
    ]
    for group in summarize(rows):
        cells = [_cell(group["with_warmup"]), _cell(group["without_warmup"])]
        collapsed = " / ".join(_collapsed(group[key]) for key in ("with_warmup", "without_warmup"))
        lines.append(f"| {group['batch_size']} | {group['accum_steps']} | "
                     f"{group['peak_learning_rate']:g} | {cells[0]} | {cells[1]} | {collapsed} |")
    return "\n".join(lines)


def write_csv(rows: list[dict[str, Any]], path: str | os.PathLike) -> None:
    """Writes one line per run, with the columns `COLUMNS`.

    Example:

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "sweep.csv")
    >>> write_csv([dict(batch_size=64, accum_steps=1, warmup=True, seed=0, peak_learning_rate=0.8,
    ...                 updates=1380, train_loss=0.01, test_accuracy=0.98, seconds=20.5)], path)
    >>> print(open(path).read().strip())
    batch_size,accum_steps,warmup,seed,peak_learning_rate,updates,train_loss,test_accuracy,seconds
    64,1,True,0,0.8,1380,0.01,0.98,20.5
    """
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def plot_sweep(rows: list[dict[str, Any]], title: str = "Test accuracy vs effective batch size (digits)") -> Any:
    """Returns a matplotlib figure: mean test accuracy vs batch size (log2 axis), with and without
    warm-up, each seed as a dot and the seeds' range shaded.

    Example:

    >>> rows = [dict(batch_size=b, accum_steps=b // 64, warmup=w, seed=0, peak_learning_rate=b / 80,
    ...              test_accuracy=a) for b, w, a in
    ...         [(64, True, 0.98), (64, False, 0.98), (512, True, 0.95), (512, False, 0.3)]]
    >>> figure = plot_sweep(rows)
    >>> [line.get_label() for line in figure.axes[0].get_lines()]
    ['with warm-up', 'without warm-up', 'chance']
    """
    pyplot = require("matplotlib.pyplot", "plot_sweep")
    summary = summarize(rows)
    batch_sizes = [group["batch_size"] for group in summary]
    figure, axes = pyplot.subplots(figsize=(7, 4))
    for key, label, color in (("with_warmup", "with warm-up", "tab:blue"),
                              ("without_warmup", "without warm-up", "tab:red")):
        runs = [[a for a in group[key] if not math.isnan(a)] for group in summary]
        kept = [(b, r) for b, r in zip(batch_sizes, runs) if r]
        sizes = [b for b, _ in kept]
        axes.plot(sizes, [sum(r) / len(r) for _, r in kept], "o-", color=color, label=label)
        axes.fill_between(sizes, [min(r) for _, r in kept], [max(r) for _, r in kept],
                          color=color, alpha=0.15, linewidth=0)
        axes.scatter([b for b, r in kept for _ in r], [a for _, r in kept for a in r],
                     color=color, s=12, alpha=0.6)
    axes.set_xscale("log", base=2)
    axes.set_xticks(batch_sizes, [str(b) for b in batch_sizes])
    axes.set_ylim(0, 1.02)
    axes.axhline(0.1, color="grey", linewidth=0.8, linestyle=":", label="chance")
    axes.set_xlabel("effective batch size (micro-batch 64 x accum_steps)")
    axes.set_ylabel("test accuracy")
    axes.set_title(title)
    axes.legend(loc="lower left")
    figure.tight_layout()
    return figure


def _cell(accuracies: list[float]) -> str:
    runs = [a for a in accuracies if not math.isnan(a)]
    if not runs:
        return "-"
    return f"**{sum(runs) / len(runs):.3f}** (" + ", ".join(f"{a:.3f}" for a in runs) + ")"


def _collapsed(accuracies: list[float]) -> str:
    runs = [a for a in accuracies if not math.isnan(a)]
    return f"{sum(a < COLLAPSE_BELOW for a in runs)}/{len(runs)}"
