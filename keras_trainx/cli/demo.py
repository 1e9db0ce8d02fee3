"""`keras-trainx demo`: the main job, a Mish CNN on scikit-learn's digits with fit_accumulated."""

import argparse

from keras_trainx.cli.errors import CommandError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds the `demo` subcommand."""
    parser = subparsers.add_parser(
        "demo", help="train a small Mish CNN on scikit-learn's digits with fit_accumulated",
        description="Train a small Mish CNN on scikit-learn's bundled digits (no download) with "
                    "exact gradient accumulation, an AugmentedSequence and a warm-up + cosine "
                    "schedule; save it and reload it with keras_trainx.load_model.",
    )
    parser.add_argument("--epochs", type=_positive_int, default=12, help="training epochs (default 12)")
    parser.add_argument("--batch-size", type=_positive_int, default=32,
                        help="micro-batch size (default 32)")
    parser.add_argument("--accum-steps", type=_positive_int, default=4,
                        help="micro-batches per update (default 4)")
    parser.add_argument("--output-dir", default="keras_trainx_demo",
                        help="where the trained model is saved (default ./keras_trainx_demo)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--verbose", type=int, default=2, choices=(0, 1, 2),
                        help="Keras progress output (default 2: one line per epoch)")
    parser.set_defaults(func=run)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an int") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1; got {value}")
    return value


def run(args: argparse.Namespace) -> int:
    """Checks the arguments before any work, then runs the demo; 0 when the reload is identical."""
    from keras_trainx import demo
    from keras_trainx.validation import check_output_folder

    try:
        check_output_folder("--output-dir", args.output_dir)
    except ValueError as error:
        raise CommandError(str(error), status=2) from None
    arguments = dict(epochs=args.epochs, batch_size=args.batch_size, accum_steps=args.accum_steps,
                     output_dir=args.output_dir, seed=args.seed, verbose=args.verbose)
    try:
        demo.check_arguments(**arguments)
    except (TypeError, ValueError) as error:
        raise CommandError(str(error), status=2) from None
    return 0 if demo.run(**arguments) else 1
