"""The warm-up sweep: its schedule, argument checks (before any training), a short real sweep, the
reports (table, CSV, plot, progress bar) and the `experiment warmup` sub-command."""

import argparse
import csv
import io
import re
import subprocess
import sys

import numpy as np
import pytest

from keras_trainx import cli, schedules
from keras_trainx.cli import experiment as cli_experiment
from keras_trainx.experiments import (
    check_warmup_sweep,
    format_table,
    plot_sweep,
    summarize,
    warmup_schedule,
    warmup_sweep,
    write_csv,
)
from keras_trainx.experiments import warmup as warmup_module
from keras_trainx.experiments.progress import ProgressBar


def test_warmup_schedule_is_the_recipe_in_float64():
    """B=384, 4 updates per epoch, 60 epochs: peak 0.1 * 384 / 8 = 4.8, /10 at epochs 36 and 51."""
    steps = np.arange(240)
    epoch = steps / 4
    decayed = 4.8 * 0.1 ** ((epoch >= 36).astype(float) + (epoch >= 51))
    smooth = warmup_schedule(384, 4, epochs=60, warmup=True)
    stairs = warmup_schedule(384, 4, epochs=60, warmup=True, staircase=True)
    none = warmup_schedule(384, 4, epochs=60, warmup=False)
    np.testing.assert_allclose(schedules.values(none, steps), decayed, rtol=1e-6)
    np.testing.assert_allclose(schedules.values(smooth, steps),
                               np.where(steps < 20, 4.8 * 0.01 ** (1 - steps / 20), decayed), rtol=1e-5)
    np.testing.assert_allclose(schedules.values(stairs, steps),
                               np.where(steps < 20, 4.8 * 0.01 ** (1 - (steps // 4) / 5), decayed), rtol=1e-5)


def test_warmup_schedule_rounds_fractional_milestones_to_the_nearest_update():
    # 20 epochs x 3 updates: 60% -> epoch 12 -> step 36; 85% -> epoch 17 -> step 51
    assert warmup_schedule(128, 3, epochs=20, warmup=False).milestones == [36, 51]
    # 30 epochs x 3 updates: 85% -> epoch 25.5 -> step 76.5 -> 77
    assert warmup_schedule(128, 3, epochs=30, warmup=False).milestones == [54, 77]


@pytest.fixture
def no_training(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("training started before the arguments were checked")

    monkeypatch.setattr(warmup_module, "_train", refuse)
    monkeypatch.setattr(warmup_module, "load_digits_standardized", refuse)


@pytest.mark.parametrize(
    "kwargs,error,words",
    [
        (dict(batch_sizes=[64, 100]), ValueError, r"`batch_sizes\[1\]` must be a multiple of micro_batch=64"),
        (dict(batch_sizes=[32]), ValueError, r"`batch_sizes\[0\]` must be an int >= 64"),
        (dict(batch_sizes=[128, 64]), ValueError, "`batch_sizes` must be strictly increasing"),
        (dict(batch_sizes=[]), ValueError, "`batch_sizes` must not be empty"),
        (dict(batch_sizes=[64.0]), TypeError, r"`batch_sizes\[0\]` must be an int"),
        (dict(batch_sizes=64), TypeError, "`batch_sizes` must be a list of ints"),
        (dict(seeds=[]), ValueError, "`seeds` must not be empty"),
        (dict(seeds=[0, 0]), ValueError, "`seeds` must be distinct"),
        (dict(seeds=[-1]), ValueError, r"`seeds\[0\]` must be an int >= 0"),
        (dict(epochs=0), ValueError, "`epochs` must be an int >= 1"),
        (dict(epochs=5, warmup_epochs=5), ValueError, "`warmup_epochs` must be an int >= 1 and <= 4"),
        (dict(warmup_epochs=0), ValueError, "`warmup_epochs`"),
        (dict(warmup_epochs=2.5), TypeError, "`warmup_epochs` must be an int"),
        (dict(epochs=10, warmup_epochs=6), ValueError, "The first decay .epoch 6 of 10. must come after the warm-up"),
        (dict(decay_at=(0.85, 0.6)), ValueError, "`decay_at` must be strictly increasing"),
        (dict(decay_at=(0.6, 1.0)), ValueError, r"`decay_at\[1\]` must be a number > 0.0 and < 1.0"),
        (dict(decay_at=(float("nan"),)), ValueError, r"`decay_at\[0\]` must be a finite number"),
        (dict(decay_at=()), ValueError, "`decay_at` must not be empty"),
        (dict(decay_at=0.6), TypeError, "`decay_at` must be a list"),
        (dict(warmup_start=0.0), ValueError, "`warmup_start`"),
        (dict(warmup_start=2.0), ValueError, "`warmup_start`"),
        (dict(base_learning_rate=-0.1), ValueError, "`base_learning_rate`"),
        (dict(base_learning_rate=float("inf")), ValueError, "`base_learning_rate` must be a finite"),
        (dict(base_batch_size=0), ValueError, "`base_batch_size`"),
        (dict(micro_batch=0), ValueError, "`micro_batch`"),
        (dict(momentum=1.0), ValueError, "`momentum` must be a number >= 0.0 and < 1.0"),
        (dict(weight_decay=-1e-4), ValueError, "`weight_decay`"),
        (dict(decay_factor=0.0), ValueError, "`decay_factor`"),
        (dict(staircase=1), TypeError, "`staircase` must be True or False"),
        (dict(progress="yes"), TypeError, "`progress`"),
        (dict(remainder="keep"), ValueError, "`remainder` must be one of"),
        # 1437 digits in micro-batches of 64 are 23 micro-batches: a window of 24 never fills
        (dict(batch_sizes=[64 * 24], remainder="drop"), ValueError, "no update would ever happen"),
    ],
)
def test_rejected_arguments_before_any_training(no_training, kwargs, error, words):
    with pytest.raises(error, match=words):
        check_warmup_sweep(**kwargs)
    with pytest.raises(error, match=words):
        warmup_sweep(**kwargs)


def test_check_warmup_sweep_returns_the_defaults_normalized():
    options = check_warmup_sweep((64, 128), (0,), epochs=np.int64(10))
    assert options["batch_sizes"] == [64, 128] and options["seeds"] == [0]
    assert options["epochs"] == 10 and type(options["epochs"]) is int
    assert options["decay_at"] == (0.6, 0.85) and options["remainder"] == "apply"


@pytest.mark.parametrize("remainder,updates", [("apply", {64: 46, 128: 24}), ("drop", {64: 46, 128: 22})])
def test_a_short_sweep_trains_every_run_with_the_counted_updates(remainder, updates, capsys):
    """2 epochs of 23 micro-batches: B=64 makes 23 updates per epoch; B=128 windows of 2 make 12
    (the 12th of one micro-batch) with "apply", 11 with "drop"."""
    rows = warmup_sweep([64, 128], [3], epochs=2, warmup_epochs=1, decay_at=[0.75], remainder=remainder)
    assert [(r["batch_size"], r["warmup"], r["seed"]) for r in rows] == [
        (64, True, 3), (64, False, 3), (128, True, 3), (128, False, 3)]
    assert [r["updates"] for r in rows] == [updates[64], updates[64], updates[128], updates[128]]
    assert [r["accum_steps"] for r in rows] == [1, 1, 2, 2]
    assert [r["peak_learning_rate"] for r in rows] == [0.8, 0.8, 1.6, 1.6]
    assert all(0.0 <= r["test_accuracy"] <= 1.0 and r["seconds"] > 0 for r in rows)
    progress = capsys.readouterr().err.strip().splitlines()
    assert progress[0::2] == [f"B={b} {w} seed 3: test accuracy {r['test_accuracy']:.3f}" for (b, w), r
                              in zip([(64, "warm-up"), (64, "no warm-up"), (128, "warm-up"), (128, "no warm-up")], rows)]
    assert [line.split(" - ")[0] for line in progress[1::2]] == ["1/4", "2/4", "3/4", "4/4"]


ROWS = [
    dict(batch_size=b, accum_steps=b // 64, warmup=w, seed=s, peak_learning_rate=b / 80, updates=u,
         train_loss=0.5, test_accuracy=a, seconds=1.0)
    for b, u, w, s, a in [
        (64, 1380, True, 0, 0.98), (64, 1380, False, 0, 0.97), (64, 1380, True, 1, 0.96), (64, 1380, False, 1, 0.99),
        (512, 180, True, 0, 0.95), (512, 180, False, 0, 0.30), (512, 180, True, 1, 0.45), (512, 180, False, 1, 0.12),
    ]
]


def test_summary_and_table():
    (small, large) = summarize(ROWS)
    assert small["with_warmup"] == [0.98, 0.96] and small["without_warmup"] == [0.97, 0.99]
    assert large["with_warmup"] == [0.95, 0.45] and large["without_warmup"] == [0.30, 0.12]
    assert format_table(ROWS).splitlines()[2:] == [
        "| 64 | 1 | 0.8 | **0.970** (0.980, 0.960) | **0.980** (0.970, 0.990) | 0/2 / 0/2 |",
        "| 512 | 8 | 6.4 | **0.700** (0.950, 0.450) | **0.210** (0.300, 0.120) | 1/2 / 2/2 |",
    ]


def test_csv_has_one_line_per_run(tmp_path):
    write_csv(ROWS, tmp_path / "sweep.csv")
    with open(tmp_path / "sweep.csv") as file:
        lines = list(csv.DictReader(file))
    assert len(lines) == 8
    assert lines[5] == {"batch_size": "512", "accum_steps": "8", "warmup": "False", "seed": "0",
                        "peak_learning_rate": "6.4", "updates": "180", "train_loss": "0.5",
                        "test_accuracy": "0.3", "seconds": "1.0"}


def test_plot_has_both_curves_on_a_log2_axis_with_the_seed_spread():
    axes = plot_sweep(ROWS).axes[0]
    with_warmup, without, chance = axes.get_lines()
    np.testing.assert_array_equal(with_warmup.get_xdata(), [64, 512])
    np.testing.assert_allclose(with_warmup.get_ydata(), [0.97, 0.70])
    np.testing.assert_allclose(without.get_ydata(), [0.98, 0.21])
    assert axes.get_xscale() == "log" and axes.xaxis.get_transform().base == 2
    from matplotlib.collections import PathCollection, PolyCollection

    bands = [c for c in axes.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 2  # one shaded min-max band per curve
    band = bands[1].get_paths()[0].vertices
    assert band[:, 1].min() == pytest.approx(0.12) and band[:, 1].max() == pytest.approx(0.99)
    dots = [c for c in axes.collections if isinstance(c, PathCollection)]
    np.testing.assert_allclose(sorted(dots[1].get_offsets()[:, 1]), [0.12, 0.30, 0.97, 0.99])


class _Terminal(io.StringIO):
    """A stream that says it is a terminal, and the screen a terminal would show for what it got."""

    def isatty(self):
        return True

    def screen(self):
        """Plays carriage returns, backspaces, "erase line" and newlines; drops colours."""
        lines, column = [""], 0
        for token in re.findall(r"\x1b\[K|\x1b\[[0-9;]*m|.", self.getvalue(), re.S):
            if token == "\x1b[K":
                lines[-1] = lines[-1][:column]
            elif token.startswith("\x1b"):
                continue
            elif token == "\r":
                column = 0
            elif token == "\b":
                column = max(column - 1, 0)
            elif token == "\n":
                lines.append("")
                column = 0
            else:
                lines[-1] = lines[-1][:column] + token + lines[-1][column + 1:]
                column += 1
        return lines


def test_progress_bar_in_a_log_file_is_one_plain_line_per_finished_run(tmp_path):
    with open(tmp_path / "log.txt", "w") as log:
        bar = ProgressBar(3, stream=log)
        for i in range(3):
            bar.finish(f"run {i}: test accuracy 0.9{i}")
    text = (tmp_path / "log.txt").read_text()
    assert "\r" not in text and "\x1b" not in text and "\b" not in text
    lines = text.splitlines()
    assert lines[0::2] == ["run 0: test accuracy 0.90", "run 1: test accuracy 0.91", "run 2: test accuracy 0.92"]
    for count, line in zip(("1/3", "2/3", "3/3"), lines[1::2]):
        assert re.fullmatch(count + r" - \d+s - \d+(us|ms|s)/run", line), line


def test_progress_bar_on_a_terminal_is_redrawn_under_the_finished_runs():
    out = _Terminal()
    bar = ProgressBar(3, stream=out)
    bar.finish("run 0: test accuracy 0.90")
    bar.finish("run 1: test accuracy 0.91")
    screen = out.screen()
    assert screen[:2] == ["run 0: test accuracy 0.90", "run 1: test accuracy 0.91"]
    assert len(screen) == 3 and re.fullmatch(r"2/3 ━{20} \d+s \d+(us|ms|s)/run", screen[2]), screen
    assert "2/3\x1b[0m \x1b[32m" + "━" * 13 + "\x1b[0m\x1b[37m" + "━" * 7 + "\x1b[0m" in out.getvalue()  # 13 of 20 done
    bar.finish("run 2: test accuracy 0.92")
    screen = out.screen()
    assert screen[:3] == ["run 0: test accuracy 0.90", "run 1: test accuracy 0.91", "run 2: test accuracy 0.92"]
    assert re.fullmatch(r"3/3 ━{20} \d+s \d+(us|ms|s)/run", screen[3]), screen
    assert screen[4:] == [""]  # the finished bar ends its line
    assert "\r" in out.getvalue()  # redrawn in place, not one line per update


def _parser():
    parser = argparse.ArgumentParser(prog="keras-trainx")
    cli_experiment.register(parser.add_subparsers(dest="command", required=True))
    return parser


@pytest.mark.parametrize(
    "argv,words",
    [
        (["--batch-sizes", "64,100"], "must be a multiple of micro_batch=64"),
        (["--batch-sizes", "64,x"], "expected comma-separated integers"),
        (["--seeds", "0,0"], "`seeds` must be distinct"),
        (["--epochs", "5", "--warmup-epochs", "5"], "`warmup_epochs`"),
        (["--epochs", "0"], "`epochs` must be an int >= 1"),
        (["--remainder", "keep"], "invalid choice"),
        (["--output-dir", __file__], "`--output-dir` must be a folder"),
    ],
)
def test_cli_usage_mistakes_exit_2_before_training(no_training, argv, words, capsys):
    try:
        status = cli.main(["experiment", "warmup", *argv])
    except SystemExit as exit_info:  # argparse's own checks
        status = exit_info.code
    assert status == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


def test_cli_help_names_the_presets_and_examples(capsys):
    with pytest.raises(SystemExit):
        _parser().parse_args(["experiment", "warmup", "--help"])
    help_text = capsys.readouterr().out
    assert "--quick" in help_text and "64,384,1024" in help_text and "keras-trainx experiment warmup --quick" in help_text


def test_cli_runs_a_short_sweep_and_writes_the_table_csv_and_plot(tmp_path, capsys):
    args = _parser().parse_args(["experiment", "warmup", "--batch-sizes", "128", "--seeds", "0", "--epochs", "2",
                                 "--warmup-epochs", "1", "--staircase", "--output-dir", str(tmp_path / "out")])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "| effective batch | accum_steps | peak lr | with warm-up | without warm-up |" in out
    assert "| 128 | 2 | 1.6 |" in out
    with open(tmp_path / "out" / "warmup_sweep.csv") as file:
        assert [(r["batch_size"], r["warmup"], r["updates"]) for r in csv.DictReader(file)] == [
            ("128", "True", "24"), ("128", "False", "24")]
    assert (tmp_path / "out" / "warmup_sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_imports_without_scikit_learn_and_matplotlib_and_names_the_extra_when_used(monkeypatch):
    code = ("import sys; sys.modules['sklearn'] = None; sys.modules['matplotlib'] = None; "
            "import keras_trainx.experiments, keras_trainx.cli.experiment; print('imported')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.stdout.strip() == "imported", result.stderr
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r"pip install 'keras_trainx\[demo\]'"):
        warmup_sweep([64], [0], epochs=2, warmup_epochs=1, decay_at=[0.75], progress=False)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"pip install 'keras_trainx\[plot\]'"):
        plot_sweep(ROWS)
