"""A plain-text progress bar for long experiments: one line per finished run, with an ETA."""

import sys
import time
from typing import TextIO


class ProgressBar:
    """Reports `done/total` runs, a bar, the last run's description and the estimated time left.

    On a terminal the line is redrawn in place (and shows the run under way); elsewhere (a log
    file, a notebook) one line is written per finished run.

    Args:
        total: number of runs.
        stream: where to write, `sys.stderr` by default.
        width: characters of the bar.

    Example:

    >>> import io
    >>> out = io.StringIO()
    >>> bar = ProgressBar(2, stream=out, width=4)
    >>> bar.start("run A")
    >>> bar.finish("run A: 0.98")
    >>> out.getvalue().startswith("[##..] 1/2 run A: 0.98")
    True
    """

    def __init__(self, total: int, stream: TextIO | None = None, width: int = 20) -> None:
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.done = 0
        self._began = time.monotonic()
        self._live = hasattr(self.stream, "isatty") and self.stream.isatty()

    def start(self, description: str) -> None:
        """Announces the run about to start (shown on terminals only)."""
        if self._live:
            self.stream.write(f"\r\033[K{self._bar()} {self.done}/{self.total} {description} ...")
            self.stream.flush()

    def finish(self, description: str) -> None:
        """Counts one run as done and reports it."""
        self.done += 1
        elapsed = time.monotonic() - self._began
        left = elapsed / self.done * (self.total - self.done)
        line = (f"{self._bar()} {self.done}/{self.total} {description} "
                f"[{_clock(elapsed)} elapsed, ~{_clock(left)} left]")
        end = "\n" if not self._live or self.done == self.total else ""
        self.stream.write(("\r\033[K" if self._live else "") + line + end)
        self.stream.flush()

    def _bar(self) -> str:
        filled = self.width * self.done // max(self.total, 1)
        return "[" + "#" * filled + "." * (self.width - filled) + "]"


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes}:{seconds:02d}"
