"""What the `experiment` subcommands share: list arguments, the output folder, and the written reports."""

import argparse
import os
import time
from collections.abc import Callable
from typing import Any

from keras_trainx.cli.errors import CommandError


def int_list(text: str) -> list[int]:
    """An argparse type: comma-separated integers."""
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_output_arguments(parser: argparse.ArgumentParser, default_folder: str) -> None:
    """Adds `--output-dir`, `--no-plot` and `--no-progress`, which every experiment takes."""
    parser.add_argument("--output-dir", default=default_folder,
                        help=f"where the CSV and the plot go (default ./{default_folder})")
    parser.add_argument("--no-plot", action="store_true", help="write no plot (no matplotlib needed)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def prepare_output(command: str, output_dir: str, plot: bool) -> None:
    """Checks the extras `command` needs and that `output_dir` can be written, then creates it."""
    from keras_trainx.extras import require
    from keras_trainx.validation import check_output_folder

    require("sklearn", f"keras-trainx {command}")
    if plot:
        require("matplotlib", f"keras-trainx {command}'s plot (or pass --no-plot)")
    try:
        check_output_folder("--output-dir", output_dir)
    except ValueError as error:
        raise CommandError(str(error), status=2) from None
    os.makedirs(output_dir, exist_ok=True)


def write_reports(rows: list[dict[str, Any]], table: str, write_csv: Callable, plot: Callable | None,
                  output_dir: str, stem: str, began: float) -> None:
    """Prints `table`, writes `stem.csv` (and `stem.png` unless `plot` is None), and the time taken."""
    print(table)
    csv_path = os.path.join(output_dir, f"{stem}.csv")
    write_csv(rows, csv_path)
    print(f"wrote {csv_path}")
    if plot is not None:
        png_path = os.path.join(output_dir, f"{stem}.png")
        plot(rows).savefig(png_path, dpi=120)
        print(f"wrote {png_path}")
    print(f"{len(rows)} runs in {time.monotonic() - began:.0f} s")
