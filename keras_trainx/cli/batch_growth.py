"""`keras-trainx experiment batch-growth`: grow the batch instead of decaying the rate, on the digits.

Trains the digits CNN with both arms of Smith et al. (2018) at equal epochs: "decay the rate" (rate
divided by the factor at each milestone, batch 64) and "grow the batch" (rate kept, effective batch
multiplied by the factor there through `fit_accumulated(accum_steps={epoch: k})`). Prints test
accuracy, updates and time per arm, and writes `batch_growth.csv` and `batch_growth.png` (accuracy
against updates) into the output directory.
"""

import argparse
import time

from keras_trainx.cli.errors import CommandError
from keras_trainx.cli.reports import add_output_arguments, int_list, prepare_output, write_reports

#: The shortest run whose milestones, 50% and 75% of it, fall on distinct epochs (2 and 3).
MINIMUM_EPOCHS = 4

EXAMPLES = """examples:
  keras-trainx experiment batch-growth --quick        # 2 runs, about a minute on 2 cores
  keras-trainx experiment batch-growth                # the README's table: 6 runs of 30 epochs
  keras-trainx experiment batch-growth --factor 2 --seeds 0,1
"""


def register(experiments: argparse._SubParsersAction) -> None:
    """Adds `batch-growth` to the `keras-trainx experiment` sub-commands."""
    from keras_trainx.experiments import GROWTH_FULL, GROWTH_QUICK

    growth = experiments.add_parser(
        "batch-growth", help="grow the batch (accum_steps by epoch) vs decay the learning rate",
        description=__doc__, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    growth.add_argument("--quick", action="store_true",
                        help=f"seeds {_join(GROWTH_QUICK['seeds'])}, {GROWTH_QUICK['epochs']} epochs "
                             f"(default: seeds {_join(GROWTH_FULL['seeds'])}, {GROWTH_FULL['epochs']} epochs)")
    growth.add_argument("--seeds", type=int_list, help="comma-separated seeds (overrides the preset)")
    growth.add_argument("--epochs", type=int, help=f"epochs per run, >= {MINIMUM_EPOCHS} (overrides the preset)")
    growth.add_argument("--learning-rate", type=float, default=0.4, help="the starting rate (default 0.4)")
    growth.add_argument("--factor", type=int, default=4,
                        help="rate divided / batch multiplied at each milestone (default 4, the largest whose "
                             "final batch, 64 x 4 x 4 = 1024, fits in the 1,437 training digits)")
    add_output_arguments(growth, "keras_trainx_batch_growth")
    growth.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Checks every argument, runs both arms per seed, prints the table, writes the CSV and plot."""
    from keras_trainx.experiments import GROWTH_FULL, GROWTH_QUICK, growth_plan

    preset = GROWTH_QUICK if args.quick else GROWTH_FULL
    seeds = args.seeds or list(preset["seeds"])
    epochs = args.epochs if args.epochs is not None else preset["epochs"]
    if epochs < MINIMUM_EPOCHS:
        raise CommandError(
            f"--epochs must be >= {MINIMUM_EPOCHS}: the rate is divided, or the batch multiplied, at 50% and 75% of "
            f"the run, which must fall on distinct epochs after the first and before the last; received --epochs "
            f"{epochs}", status=2)
    try:
        growth_plan(epochs, learning_rate=args.learning_rate, factor=args.factor)
        if any(seed < 0 for seed in seeds):
            raise ValueError(f"--seeds must be ints >= 0; received {_join(seeds)}")
    except (TypeError, ValueError) as error:
        raise CommandError(str(error), status=2) from None
    prepare_output("experiment batch-growth", args.output_dir, plot=not args.no_plot)

    from keras_trainx.experiments import batch_growth_experiment, format_growth_table, plot_growth, write_growth_csv

    print(f"batch growth: {2 * len(seeds)} runs of {epochs} epochs on the digits, micro-batch 64, rate "
          f"{args.learning_rate:g}; at 50% and 75% of the run the rate is divided, or the batch "
          f"multiplied, by {args.factor}", flush=True)
    began = time.monotonic()
    rows = batch_growth_experiment(seeds, epochs=epochs, learning_rate=args.learning_rate, factor=args.factor,
                                   progress=not args.no_progress)
    write_reports(rows, format_growth_table(rows), write_growth_csv, None if args.no_plot else plot_growth,
                  args.output_dir, "batch_growth", began)
    return 0


def _join(values: object) -> str:
    return ",".join(map(str, values))  # type: ignore[call-overload]

