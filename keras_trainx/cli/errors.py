"""The error a subcommand raises for a failure the user can act on: one line on stderr, no traceback."""


class CommandError(Exception):
    """A subcommand's failure; `main` prints its message and exits with `status`.

    Args:
        message: one line naming the file or option and what to do.
        status: 1 for a runtime failure (the default), 2 for an unusable argument.
    """

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status
