"""`keras-trainx experiment warmup`: the warm-up sweep at large effective batch, on the digits.

Sweeps effective batch sizes x {warm-up, none} x seeds with `fit_accumulated`, prints the table in
the article's form (test accuracy with / without warm-up), and writes `warmup_sweep.csv` and
`warmup_sweep.png` (accuracy vs batch size, log2 axis) into the output directory.
"""

import argparse
import time

from keras_trainx.cli import batch_growth
from keras_trainx.cli.errors import CommandError
from keras_trainx.cli.reports import add_output_arguments, int_list, prepare_output, write_reports

EXAMPLES = """examples:
  keras-trainx experiment warmup --quick              # 6 runs, a few minutes on 2 cores
  keras-trainx experiment warmup                      # the README's table: 54 runs
  keras-trainx experiment warmup --batch-sizes 256,384,512 --seeds 0,1 --staircase
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds `experiment` (with its sub-command `warmup`) to the `keras-trainx` sub-commands."""
    from keras_trainx.experiments import FULL, QUICK

    experiment = subparsers.add_parser(
        "experiment", help="run an experiment on the bundled digits and report it",
        description="Experiments that run on a CPU with scikit-learn's bundled digits.",
    )
    experiments = experiment.add_subparsers(dest="experiment", required=True)
    warmup = experiments.add_parser(
        "warmup", help="test accuracy vs effective batch size, with and without LR warm-up",
        description=__doc__, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    warmup.add_argument("--quick", action="store_true",
                        help=f"the quick sweep: {_describe(QUICK)} (default: {_describe(FULL)})")
    warmup.add_argument("--batch-sizes", type=int_list,
                        help="comma-separated effective batch sizes, multiples of 64 (overrides the preset)")
    warmup.add_argument("--seeds", type=int_list, help="comma-separated seeds (overrides the preset)")
    warmup.add_argument("--epochs", type=int, help="epochs per run (overrides the preset)")
    warmup.add_argument("--warmup-epochs", type=int, default=5, help="warm-up length in epochs (default 5)")
    warmup.add_argument("--staircase", action="store_true",
                        help="raise the warm-up rate once per epoch, as in the article (default: every update)")
    warmup.add_argument("--remainder", choices=("apply", "drop"), default="apply",
                        help="fit_accumulated's remainder for the short last window (default apply)")
    add_output_arguments(warmup, "keras_trainx_warmup")
    warmup.set_defaults(func=run)
    batch_growth.register(experiments)


def run(args: argparse.Namespace) -> int:
    """Checks every argument, runs the sweep, prints the table, writes the CSV and the plot."""
    from keras_trainx.experiments import QUICK, FULL, check_warmup_sweep, format_table, plot_sweep, write_csv

    preset = QUICK if args.quick else FULL
    try:
        options = check_warmup_sweep(
            args.batch_sizes or preset["batch_sizes"], args.seeds or preset["seeds"],
            epochs=args.epochs if args.epochs is not None else preset["epochs"],
            warmup_epochs=args.warmup_epochs, staircase=args.staircase, remainder=args.remainder,
            progress=not args.no_progress,
        )
    except (TypeError, ValueError) as error:
        raise CommandError(str(error), status=2) from None
    prepare_output("experiment warmup", args.output_dir, plot=not args.no_plot)

    from keras_trainx.experiments import warmup_sweep

    runs = len(options["batch_sizes"]) * len(options["seeds"]) * 2
    print(f"warm-up sweep: {runs} runs of {options['epochs']} epochs on the digits, micro-batch "
          f"{options['micro_batch']}, peak lr = {options['base_learning_rate']:g} x B / "
          f"{options['base_batch_size']}, warm-up {options['warmup_epochs']} epochs from "
          f"{options['warmup_start']:g} of the peak, /10 at {_percent(options['decay_at'])} of the run",
          flush=True)
    began = time.monotonic()
    rows = warmup_sweep(**options)
    write_reports(rows, format_table(rows), write_csv, None if args.no_plot else plot_sweep, args.output_dir,
                  "warmup_sweep", began)
    return 0


def _describe(preset: dict) -> str:
    return (f"batch sizes {','.join(map(str, preset['batch_sizes']))}, seeds "
            f"{','.join(map(str, preset['seeds']))}, {preset['epochs']} epochs")


def _percent(fractions: list[float]) -> str:
    return " and ".join(f"{100 * f:g}%" for f in fractions)
