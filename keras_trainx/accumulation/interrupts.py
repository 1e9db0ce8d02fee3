"""A `KeyboardInterrupt` raised inside a data generator, given back as `KeyboardInterrupt`.

A Python generator or a `keras.utils.PyDataset` given to `Model.fit` runs inside tf.data (a
`py_function` on one of TensorFlow's threads), and an exception raised there reaches `Model.fit` as a
`tf.errors.OpError`: a `KeyboardInterrupt` as `tf.errors.UnknownError`, whose message holds the
exception's own line (`KeyboardInterrupt: ...`) followed by its Python traceback, so a script's
`except KeyboardInterrupt` does not catch it. `fit_accumulated` raises `KeyboardInterrupt` instead,
with TensorFlow's error (and the generator's traceback) as its cause.

A Ctrl-C pressed at the terminal is not one of these: Python delivers the signal to the main thread,
which raises `KeyboardInterrupt` when TensorFlow returns to it, in `Model.fit` as in `fit_accumulated`.
"""

import contextlib
import re
from collections.abc import Iterator

import tensorflow as tf

# the line TensorFlow's py_function writes first: the Python exception as `traceback` formats it, then
# its traceback
_RAISED = re.compile(r"^([\w.]+)(?:: (.*))?\nTraceback \(most recent call last\):", re.MULTILINE)


def raised_keyboard_interrupt(error: tf.errors.OpError) -> KeyboardInterrupt | None:
    """The `KeyboardInterrupt` that Python code inside tf.data raised, if `error` reports one.

    Example:

    >>> error = tf.errors.UnknownError(None, None, "Graph execution error:\\n\\nKeyboardInterrupt: stop\\n"
    ...                                "Traceback (most recent call last):\\n  File ...")
    >>> raised_keyboard_interrupt(error)
    KeyboardInterrupt('stop')
    >>> raised_keyboard_interrupt(tf.errors.UnknownError(None, None, "OSError: disk\\n"
    ...                                                  "Traceback (most recent call last):\\n")) is None
    True
    """
    raised = _RAISED.search(error.message)
    if raised is None or raised.group(1) != "KeyboardInterrupt":
        return None
    return KeyboardInterrupt(raised.group(2)) if raised.group(2) else KeyboardInterrupt()


@contextlib.contextmanager
def keyboard_interrupts_restored() -> Iterator[None]:
    """Raises `KeyboardInterrupt` where the block raises a `tf.errors.UnknownError` reporting one.

    Example:

    >>> try:
    ...     with keyboard_interrupts_restored():
    ...         raise tf.errors.UnknownError(None, None, "KeyboardInterrupt: \\nTraceback (most recent call last):")
    ... except KeyboardInterrupt as interrupt:
    ...     print(repr(interrupt), "from", type(interrupt.__cause__).__name__)
    KeyboardInterrupt() from UnknownError
    """
    try:
        yield
    except tf.errors.UnknownError as error:
        interrupt = raised_keyboard_interrupt(error)
        if interrupt is None:
            raise
        raise interrupt from error
