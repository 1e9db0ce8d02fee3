"""The `keras-trainx` command line: `demo`, `inspect`, `plot-schedule`, `experiment`, `launch`.

Each subcommand is a module of this package with `register(subparsers)` (adds its parser and sets
`func=run`) and `run(args) -> int`. Usage mistakes exit with status 2 (argparse), failures the user
can act on (`CommandError`, or a missing optional package: `MissingExtraError`) with status 1 and
one line on stderr, never a traceback; Ctrl-C (KeyboardInterrupt) with status 130 and one line
(`demo` writes its model under a temporary name and renames it when complete). The library
never imports this package.
"""

import argparse
import os
import signal
import sys
import threading
from typing import Any

from keras_trainx.cli import demo, experiment, inspect, launch, plot_schedule
from keras_trainx.cli.errors import CommandError
from keras_trainx.extras import MissingExtraError

SUBCOMMANDS = (demo, inspect, plot_schedule, experiment, launch)


def build_parser() -> argparse.ArgumentParser:
    """Returns the argument parser with one subcommand per module of `SUBCOMMANDS`."""
    parser = argparse.ArgumentParser(prog="keras-trainx", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for subcommand in SUBCOMMANDS:
        subcommand.register(subparsers)
    return parser


# Seconds an interrupted command has to end by itself before the console script ends it.
INTERRUPT_GRACE_SECONDS = 10.0

_running = {"command": ""}


def main(argv: list[str] | None = None) -> int:
    """Runs the command line `argv` (default: `sys.argv[1:]`); returns the exit status. The console
    script, `entry_point`, calls it."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _running["command"] = args.command
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


def _exit_interrupted() -> None:
    print(f"keras-trainx {_running['command']}: interrupted", file=sys.stderr)
    _exit(130)


def _interrupt(signum: int, frame: Any) -> None:
    """Ctrl-C: Python's KeyboardInterrupt, and a deadline. Raised inside Python code that TensorFlow
    runs for a `tf.data` pipeline, the exception can be lost (CI saw a Ctrl-C'd demo train to its end
    and exit 0); if it is, the process still ends `INTERRUPT_GRACE_SECONDS` later, with status 130."""
    deadline = threading.Timer(INTERRUPT_GRACE_SECONDS, _exit_interrupted)
    deadline.daemon = True
    deadline.start()
    signal.default_int_handler(signum, frame)


def _exit(status: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def entry_point() -> None:
    """The console script: runs `main` and exits with its status.

    After Ctrl-C the process ends at once (`os._exit`, streams flushed) instead of through the
    interpreter's shutdown: a `tf.data` generator iterator (Keras feeding a `PyDataset`) whose thread is
    still inside Python when the interpreter finalizes aborts the process ("FATAL: exception not
    rethrown", status -6) or deadlocks it (tensorflow/tensorflow#35100).
    """
    signal.signal(signal.SIGINT, _interrupt)
    status = main()
    if status == 130:
        _exit(status)
    sys.exit(status)
