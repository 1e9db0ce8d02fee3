"""Progress of a long experiment: one line per finished run, counted by `keras.utils.Progbar`."""

import contextlib
import sys
from typing import TextIO

import keras


class ProgressBar:
    """Writes each finished run's description on a line of its own, and Keras' progress bar below.

    The count of runs done, the time per run and, on a terminal, the estimated time left are Keras'
    own `keras.utils.Progbar`, drawn as `Model.fit` draws its epochs: on a terminal (a stream whose
    `isatty()` is true) as one bar redrawn in place under the finished runs (`verbose=1`);
    elsewhere (a log file, a notebook, a pipe) as one plain line per finished run with no control
    characters (`verbose=2`). As Keras' bar, it goes to `absl.logging` instead when
    `keras.config.disable_interactive_logging()` is in force.

    Args:
        total: number of runs.
        stream: where to write, `sys.stderr` by default.

    Example:

    >>> import io
    >>> out = io.StringIO()
    >>> bar = ProgressBar(2, stream=out)
    >>> bar.finish("run A: 0.98")
    >>> out.getvalue().splitlines()[0]
    'run A: 0.98'
    >>> out.getvalue().splitlines()[1].startswith("1/2 - ")
    True
    """

    def __init__(self, total: int, stream: TextIO | None = None) -> None:
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.done = 0
        self._live = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._bar = keras.utils.Progbar(total, verbose=1 if self._live else 2, interval=0.0, unit_name="run")

    def finish(self, description: str) -> None:
        """Counts one run as done: writes `description` on its own line, then the updated bar."""
        self.done += 1
        # On a terminal the bar's line is cleared first, so that the description replaces it.
        self.stream.write(("\r\033[K" if self._live else "") + description + "\n")
        with contextlib.redirect_stdout(self.stream):
            self._bar.update(self.done, finalize=None if self._live else True)
        self.stream.flush()
