"""`keras-trainx launch --workers N [--max-restarts R] SCRIPT [ARGS...]`: N workers of a script on this machine."""

import argparse
import os
import signal
import sys
from typing import Any

from keras_trainx.cli.errors import CommandError
from keras_trainx.distribute.launch import WorkerFailed, launch

# The exit status after SIGTERM, as a shell reports a process it ended (128 + 15).
TERMINATED_STATUS = 143


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds the `launch` subcommand."""
    parser = subparsers.add_parser(
        "launch", help="run a training script as N workers on this machine, each with its TF_CONFIG",
        description="Run `python SCRIPT ARGS...` as N worker processes on this machine, each with a "
                    "TF_CONFIG on free 127.0.0.1 ports (auto_strategy() then builds a "
                    "MultiWorkerMirroredStrategy), each output line prefixed with [worker i]. When a "
                    "worker fails the others are stopped; with --max-restarts R the group then starts "
                    "again, up to R times (a script with keras.callbacks.BackupAndRestore resumes). Ctrl-C "
                    "reaches every worker. Exit status: 0 when all workers succeed, 1 when one fails "
                    "(the line names it), 2 for unusable arguments, 130 after Ctrl-C, 143 after SIGTERM.",
    )
    parser.add_argument("--workers", type=int, required=True, metavar="N", help="number of worker processes")
    parser.add_argument("--max-restarts", type=int, default=0, metavar="R",
                        help="restart the whole group up to R times after a worker fails (default 0)")
    parser.add_argument("script", metavar="SCRIPT", help="the Python training script each worker runs")
    parser.add_argument("script_args", nargs=argparse.REMAINDER, metavar="ARGS",
                        help="arguments passed to SCRIPT")
    parser.set_defaults(func=run)


class _Terminated(Exception):
    """SIGTERM reached the launcher."""


def _terminate(signum: int, frame: Any) -> None:
    raise _Terminated


def run(args: argparse.Namespace) -> int:
    """Checks the arguments, then runs the workers; 0 when all succeed."""
    if args.workers < 1:
        raise CommandError(f"--workers must be an int >= 1; received --workers {args.workers}", status=2)
    if args.max_restarts < 0:
        raise CommandError(f"--max-restarts must be an int >= 0; received --max-restarts {args.max_restarts}",
                           status=2)
    if not os.path.isfile(args.script):
        raise CommandError(f"SCRIPT {args.script!r} is not a file", status=2)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        launch([sys.executable, args.script, *args.script_args], args.workers, max_restarts=args.max_restarts)
    except WorkerFailed as error:
        raise CommandError(str(error)) from None
    except _Terminated:
        print("keras-trainx launch: terminated", file=sys.stderr)
        return TERMINATED_STATUS
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0
