"""`keras-trainx inspect MODEL`: the custom objects a saved model references, and whether each resolves."""

import argparse

from keras_trainx import saving
from keras_trainx.cli.errors import CommandError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds the `inspect` subcommand."""
    parser = subparsers.add_parser(
        "inspect", help="list the custom objects a saved model references",
        description="List the custom objects a saved model (.keras or .h5) references and whether "
                    "each resolves with keras_trainx imported. Exit status 1 when some do not; 2 "
                    "when MODEL is not a readable saved model.",
    )
    parser.add_argument("model", metavar="MODEL",
                        help="path of a .keras file/directory or a legacy .h5 file")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Prints each referenced custom object; 0 if all resolve, 1 if some do not."""
    try:
        references = saving.referenced_objects(args.model)
    except (OSError, ValueError) as error:
        raise CommandError(f"MODEL: {error}", status=2) from None
    if not references:
        print(f"{args.model}: no custom objects (plain Keras model)")
        return 0
    print(f"{args.model}: {len(references)} custom object(s)")
    width = max(len(name) for name in references)
    for name, resolves in references.items():
        print(f"  {name:<{width}}  {'resolves' if resolves else 'UNKNOWN'}")
    unknown = [name for name, resolves in references.items() if not resolves]
    if unknown:
        print(f"unknown: {', '.join(unknown)} -- pass them to load_model(custom_objects=...)")
    return 1 if unknown else 0
