"""`values()` and `plot()`: look at any learning-rate schedule; the `plot-schedule` command."""

import argparse
import json
import os
import sys

import keras
import numpy as np
import tensorflow as tf


def _steps_array(steps):
    if isinstance(steps, (int, np.integer)) and not isinstance(steps, bool):
        if steps < 1:
            raise ValueError(f"`steps` must be >= 1 when given as an int; received steps={steps}.")
        return np.arange(steps)
    array = np.asarray(steps)
    if array.ndim != 1 or array.size == 0 or array.dtype.kind not in "iu" or (array < 0).any():
        raise ValueError(
            f"`steps` must be an int or a non-empty 1-D sequence of non-negative ints; received {steps!r}."
        )
    return array


def values(schedule, steps):
    """Evaluates a schedule at each step.

    Args:
        schedule: A `keras.optimizers.schedules.LearningRateSchedule`.
        steps: A Python int `n` (steps `0 .. n-1`) or a 1-D sequence of non-negative int steps.

    Returns:
        A float64 numpy array with one learning rate per step.

    Example:

    >>> import keras_trainx
    >>> keras_trainx.schedules.values(keras_trainx.schedules.MultiStepDecay(1.0, [2], 0.5), 4).tolist()
    [1.0, 1.0, 0.5, 0.5]
    """
    if not isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
        raise TypeError(
            f"`schedule` must be a keras.optimizers.schedules.LearningRateSchedule; received {schedule!r}."
        )
    steps = _steps_array(steps)
    evaluate = tf.function(
        lambda s: tf.map_fn(lambda t: tf.cast(schedule(t), tf.float64), s, fn_output_signature=tf.float64)
    ).get_concrete_function(tf.TensorSpec([None], tf.int64))
    return evaluate(tf.constant(steps, tf.int64)).numpy()


def plot(schedule, steps, ax=None):
    """Plots a schedule's learning rate against the step.

    Args:
        schedule: A `keras.optimizers.schedules.LearningRateSchedule`.
        steps: A Python int `n` (steps `0 .. n-1`) or a 1-D sequence of non-negative int steps.
        ax: Optional matplotlib `Axes` to draw into; a new figure is made when `None`.

    Returns:
        The matplotlib `Figure` holding the plot.

    Example:

    >>> import keras_trainx
    >>> figure = keras_trainx.schedules.plot(keras_trainx.schedules.OneCycle(0.1, 100), 100)
    >>> figure.axes[0].get_lines()[0].get_ydata().max().round(4)  # figure.savefig("lr.png") saves it
    np.float64(0.1)
    """
    import matplotlib.pyplot as plt

    xs = _steps_array(steps)
    ys = values(schedule, xs)
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(xs, ys)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate")
    ax.set_title(type(schedule).__name__)
    ax.grid(True, alpha=0.3)
    return ax.figure


def schedule_from_cli(spec, config):
    """Builds a schedule from the command line's SCHEDULE and --config (see `add_arguments`)."""
    import keras_trainx.saving

    if config != "{}" and (spec.endswith(".json") or spec.lstrip().startswith("{")):
        raise ValueError("--config goes with a class-name SCHEDULE; a JSON SCHEDULE holds its own config.")
    if spec.endswith(".json"):
        if not os.path.isfile(spec):
            raise ValueError(f"SCHEDULE {spec!r} looks like a JSON file but does not exist.")
        with open(spec) as f:
            serialized = json.load(f)
    elif spec.lstrip().startswith("{"):
        serialized = json.loads(spec)
    else:
        serialized = {"class_name": spec, "config": json.loads(config)}
    ours = {
        obj.__name__: obj
        for obj in keras_trainx.saving.custom_objects().values()
        if isinstance(obj, type) and issubclass(obj, keras.optimizers.schedules.LearningRateSchedule)
    }
    schedule = keras.optimizers.schedules.deserialize(
        serialized, custom_objects={**keras_trainx.saving.custom_objects(), **ours}
    )
    if not isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
        raise ValueError(
            f"SCHEDULE {spec!r} is not a known learning-rate schedule; use one of {sorted(ours)} or a Keras "
            "schedule (e.g. CosineDecay, PiecewiseConstantDecay)."
        )
    return schedule


def run(args):
    """Runs `keras-trainx plot-schedule`; returns the exit code (2 for a bad SCHEDULE or --steps)."""
    import matplotlib

    matplotlib.use("Agg")
    try:
        schedule = schedule_from_cli(args.schedule, args.config)
        lrs = values(schedule, args.steps)
    except (TypeError, ValueError) as error:
        print(f"keras-trainx plot-schedule: error: {error}", file=sys.stderr)
        return 2
    figure = plot(schedule, args.steps)
    figure.savefig(args.output, dpi=120, bbox_inches="tight")
    print(
        f"wrote {args.output}: {type(schedule).__name__}, {args.steps} steps, "
        f"first {lrs[0]:.6g}, max {lrs.max():.6g} at step {int(lrs.argmax())}, last {lrs[-1]:.6g}"
    )
    return 0


def add_arguments(parser):
    """Adds the `plot-schedule` arguments to `parser` and sets `run` as its handler."""
    parser.description = (
        "Plot a learning-rate schedule to a PNG. SCHEDULE is a class name (ours, e.g. OneCycle, or "
        "Keras', e.g. CosineDecay) with --config holding its keyword arguments as JSON; or a JSON "
        "object / .json file holding keras.saving.serialize_keras_object(schedule)."
    )
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "examples:\n"
        "  keras-trainx plot-schedule OneCycle --config "
        '\'{"max_learning_rate": 0.1, "total_steps": 1000}\' --steps 1000 -o onecycle.png\n'
        "  keras-trainx plot-schedule schedule.json --steps 5000 -o lr.png"
    )
    parser.add_argument("schedule", metavar="SCHEDULE", help="class name, JSON object, or path to a .json file")
    parser.add_argument("--config", default="{}", help="JSON keyword arguments for a class-name SCHEDULE")
    parser.add_argument("--steps", type=int, required=True, help="number of optimizer steps to plot")
    parser.add_argument("-o", "--output", required=True, help="PNG file to write")
    parser.set_defaults(run=run)
