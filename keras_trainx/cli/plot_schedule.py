"""`keras-trainx plot-schedule SCHEDULE`: a learning-rate schedule drawn to a PNG."""

import argparse
import json
import os

import keras

from keras_trainx import saving, schedules
from keras_trainx.cli.errors import CommandError
from keras_trainx.validation import write_failure


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds the `plot-schedule` subcommand."""
    parser = subparsers.add_parser(
        "plot-schedule", help="plot a learning-rate schedule to a PNG",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Plot a learning-rate schedule to a PNG. SCHEDULE is a class name (ours, e.g. "
                    "OneCycle, or Keras', e.g. CosineDecay) with --config holding its keyword "
                    "arguments as JSON; or a JSON object / .json file holding "
                    "keras.saving.serialize_keras_object(schedule).",
        epilog="examples:\n"
               "  keras-trainx plot-schedule OneCycle --config "
               '\'{"max_learning_rate": 0.1, "total_steps": 1000}\' --steps 1000 -o onecycle.png\n'
               "  keras-trainx plot-schedule schedule.json --steps 5000 -o lr.png",
    )
    parser.add_argument("schedule", metavar="SCHEDULE",
                        help="class name, JSON object, or path to a .json file")
    parser.add_argument("--config", default="{}",
                        help="JSON keyword arguments for a class-name SCHEDULE")
    parser.add_argument("--steps", type=int, required=True, help="number of optimizer steps to plot")
    parser.add_argument("-o", "--output", required=True, help="PNG file to write")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Writes the PNG and prints the schedule's first, largest and last values."""
    _check_output(args.output)
    try:
        schedule = schedule_from_arguments(args.schedule, args.config)
        figure = schedules.plot(schedule, args.steps)
    except (TypeError, ValueError) as error:
        raise CommandError(" ".join(str(error).split()), status=2) from None
    (line,) = figure.axes[0].get_lines()  # the steps where the curve is drawn (schedules.drawn_steps)
    steps, lrs = line.get_xdata(), line.get_ydata()
    figure.savefig(args.output, dpi=120, bbox_inches="tight")
    print(
        f"wrote {args.output}: {type(schedule).__name__}, {args.steps} steps, "
        f"first {lrs[0]:.6g}, max {lrs.max():.6g} at step {int(steps[lrs.argmax()])}, last {lrs[-1]:.6g}"
    )
    return 0


def _check_output(output: str) -> None:
    """-o/--output names a .png file that can be written: not a folder, in a writable folder."""
    if not output.lower().endswith(".png"):
        raise CommandError(f"-o/--output {output!r} must name a .png file", status=2)
    if os.path.isdir(output):
        raise CommandError(f"-o/--output {output!r} is a folder; name a .png file", status=2)
    directory = os.path.dirname(output) or "."
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise CommandError(f"-o/--output {output!r}: {directory!r} is a file, not a folder", status=2)
    if not os.path.isdir(directory):
        raise CommandError(f"-o/--output {output!r}: folder {directory!r} does not exist", status=2)
    failure = write_failure(directory)
    if failure:
        raise CommandError(f"-o/--output {output!r}: cannot write in folder {directory!r} ({failure})", status=2)


_JSON_KINDS = {int: "number", float: "number", str: "string", list: "array", bool: "true/false",
               type(None): "null", dict: "object"}
_SERIALIZED = ('must hold a serialized schedule: a JSON object with a "class_name" string and a "config" '
               "object (as keras.saving.serialize_keras_object(schedule) writes)")


def schedule_from_arguments(spec: str, config: str) -> keras.optimizers.schedules.LearningRateSchedule:
    """Builds a schedule from SCHEDULE and --config (see `register`).

    Raises ValueError (TypeError for a schedule's own argument errors) naming the option or file and
    what is wrong with it, in one line.
    """
    if config != "{}" and (spec.endswith(".json") or spec.lstrip().startswith("{")):
        raise ValueError("--config goes with a class-name SCHEDULE; a JSON SCHEDULE holds its own config.")
    if spec.endswith(".json"):
        where = f"SCHEDULE file {spec!r}"
        if not os.path.isfile(spec):
            raise ValueError(f"SCHEDULE {spec!r} looks like a JSON file but does not exist.")
        with open(spec, "rb") as f:
            raw = f.read()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(f"{where} is not UTF-8 text ({error}).") from None
        serialized = _parse(where, text)
    elif spec.lstrip().startswith("{"):
        where = f"SCHEDULE {spec!r}"
        serialized = _parse(where, spec)
    else:
        where = "--config"
        arguments = _parse(f"--config {config!r}", config)
        if not isinstance(arguments, dict):
            raise ValueError(f"--config must be a JSON object of {spec}'s keyword arguments; received a JSON "
                             f"{_JSON_KINDS[type(arguments)]}: {config!r}.")
        serialized = {"class_name": spec, "config": arguments}
    if not isinstance(serialized, dict):
        raise ValueError(f"{where} {_SERIALIZED}; it is a JSON {_JSON_KINDS[type(serialized)]}.")
    if not isinstance(serialized.get("class_name"), str) or not isinstance(serialized.get("config"), dict):
        wrong = "class_name" if not isinstance(serialized.get("class_name"), str) else "config"
        raise ValueError(f'{where} {_SERIALIZED}; its "{wrong}" is a JSON '
                         f"{_JSON_KINDS.get(type(serialized.get(wrong)), 'value')}.")
    objects = {**saving.custom_objects(), **_our_schedules()}
    cls = _schedule_class(serialized, objects)
    with keras.saving.CustomObjectScope(objects):
        try:
            return cls.from_config(serialized["config"])
        except TypeError as error:  # an unknown or missing keyword argument: one line naming it
            raise ValueError(f"{where}: {' '.join(str(error).split())}.") from None


def _parse(where: str, text: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{where} is not JSON ({error}).") from None


def _our_schedules() -> dict[str, type]:
    return {
        obj.__name__: obj
        for obj in saving.custom_objects().values()
        if isinstance(obj, type) and issubclass(obj, keras.optimizers.schedules.LearningRateSchedule)
    }


def _schedule_class(serialized: dict,
                    objects: dict[str, object]) -> type[keras.optimizers.schedules.LearningRateSchedule]:
    """The `LearningRateSchedule` class a serialized schedule names: ours, Keras', or registered."""
    name, registered = serialized["class_name"], serialized.get("registered_name")
    for candidate in (objects.get(name), objects.get(str(registered)), getattr(keras.optimizers.schedules, name, None),
                      keras.saving.get_registered_object(str(registered or name))):
        if isinstance(candidate, type) and issubclass(candidate, keras.optimizers.schedules.LearningRateSchedule):
            return candidate
    raise ValueError(
        f"SCHEDULE {name!r} is not a known learning-rate schedule; use one of {sorted(_our_schedules())} or a "
        "Keras schedule (e.g. CosineDecay, PiecewiseConstantDecay)."
    )
