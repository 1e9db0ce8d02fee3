"""The `keras-trainx` command line: `demo`, `inspect MODEL`, `plot-schedule`."""

import argparse
import sys


def build_parser():
    """Returns the argument parser with one sub-command per task."""
    parser = argparse.ArgumentParser(prog="keras-trainx", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    from keras_trainx import demo

    demo.add_arguments(commands.add_parser("demo", help=demo.__doc__.splitlines()[0]))

    from keras_trainx import saving
    from keras_trainx.schedules import plotting

    saving.add_arguments(commands.add_parser("inspect", help="list the custom objects a saved model references"))
    plotting.add_arguments(commands.add_parser("plot-schedule", help="plot a learning-rate schedule to a PNG"))
    return parser


def main(argv=None):
    """Entry point of the console script; returns the process exit code."""
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
