"""The `keras-trainx` command line: `demo`, `inspect MODEL`, `plot-schedule`, `experiment warmup`.

Each subcommand is a module of this package with `register(subparsers)` (adds its parser and sets
`func=run`) and `run(args) -> int`. Usage mistakes exit with status 2 (argparse), failures the user
can act on (`CommandError`, or a missing optional package: `MissingExtraError`) with status 1 and
one line on stderr, never a traceback; Ctrl-C (KeyboardInterrupt) with status 130 and one line
(`demo` writes its model under a temporary name and renames it when complete). The library
never imports this package.
"""

import argparse
import os
import sys

from keras_trainx.cli import demo, experiment, inspect, plot_schedule
from keras_trainx.cli.errors import CommandError
from keras_trainx.extras import MissingExtraError

SUBCOMMANDS = (demo, inspect, plot_schedule, experiment)


def build_parser() -> argparse.ArgumentParser:
    """Returns the argument parser with one subcommand per module of `SUBCOMMANDS`."""
    parser = argparse.ArgumentParser(prog="keras-trainx", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for subcommand in SUBCOMMANDS:
        subcommand.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except CommandError as error:
        print(f"keras-trainx {args.command}: error: {error}", file=sys.stderr)
        return error.status
    except MissingExtraError as error:
        print(f"keras-trainx {args.command}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"keras-trainx {args.command}: interrupted", file=sys.stderr)
        return 130


def entry_point() -> None:
    """The console script: runs `main` and exits with its status.

    After Ctrl-C the process ends at once (`os._exit`, streams flushed) instead of through the
    interpreter's shutdown: a `tf.data` generator iterator (Keras feeding a `PyDataset`) whose thread is
    still inside Python when the interpreter finalizes aborts the process ("FATAL: exception not
    rethrown", status -6) or deadlocks it (tensorflow/tensorflow#35100).
    """
    status = main()
    if status == 130:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)
