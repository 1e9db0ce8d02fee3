"""Argument checks shared by every public entry point: one style of message everywhere.

A value of the wrong type raises `TypeError`; a value of the right type outside its accepted range
raises `ValueError`. Both name the argument, say what is accepted and show what was received, so
the message alone tells the user the fix.
"""

import math
import numbers
import os
import tempfile
import warnings
from collections.abc import Collection
from typing import Any


def _received(name: str, value: Any) -> str:
    return f"received {name}={value!r}"


def check_int(name: str, value: Any, *, minimum: int | None = None, maximum: int | None = None,
              hint: str = "") -> int:
    """Returns `value` as an `int` if it is an integer within `[minimum, maximum]`.

    Args:
        name: the argument's name, as the user spelled it.
        value: the value to check. `bool` is refused (it is an `int` only by accident).
        minimum: smallest accepted value, or `None`.
        maximum: largest accepted value, or `None`.
        hint: one sentence appended to the message, e.g. how to get the default behaviour.

    Example:

    >>> check_int("accum_steps", 4, minimum=1)
    4
    >>> check_int("accum_steps", 0, minimum=1)
    Traceback (most recent call last):
    ...
    ValueError: `accum_steps` must be an int >= 1; received accum_steps=0.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(_join(f"`{name}` must be an int; {_received(name, value)} of type "
                              f"{type(value).__name__}.", hint))
    value = int(value)
    _check_range(name, value, minimum, maximum, False, False, "an int", hint)
    return value


def check_float(name: str, value: Any, *, minimum: float | None = None,
                maximum: float | None = None, exclusive_minimum: bool = False,
                exclusive_maximum: bool = False, hint: str = "") -> float:
    """Returns `value` as a finite `float` within the given bounds.

    Args:
        name: the argument's name, as the user spelled it.
        value: the value to check: any real number except `bool`; NaN and infinities are refused.
        minimum: lower bound, or `None`.
        maximum: upper bound, or `None`.
        exclusive_minimum: whether `minimum` itself is refused.
        exclusive_maximum: whether `maximum` itself is refused.
        hint: one sentence appended to the message.

    Example:

    >>> check_float("max_learning_rate", 0.1, minimum=0.0, exclusive_minimum=True)
    0.1
    >>> check_float("max_learning_rate", float("nan"))
    Traceback (most recent call last):
    ...
    ValueError: `max_learning_rate` must be a finite number; received max_learning_rate=nan.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(_join(f"`{name}` must be a number; {_received(name, value)} of type "
                              f"{type(value).__name__}.", hint))
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(_join(f"`{name}` must be a finite number; {_received(name, value)}.", hint))
    _check_range(name, value, minimum, maximum, exclusive_minimum, exclusive_maximum, "a number", hint)
    return value


def check_bool(name: str, value: Any, *, hint: str = "") -> bool:
    """Returns `value` if it is `True` or `False`.

    Example:

    >>> check_bool("staircase", 1)
    Traceback (most recent call last):
    ...
    TypeError: `staircase` must be True or False; received staircase=1 of type int.
    """
    if not isinstance(value, bool):
        raise TypeError(_join(f"`{name}` must be True or False; {_received(name, value)} of type "
                              f"{type(value).__name__}.", hint))
    return value


def check_choice(name: str, value: Any, choices: Collection[Any], *, hint: str = "") -> Any:
    """Returns `value` if it is one of `choices`.

    Example:

    >>> check_choice("remainder", "keep", ("apply", "drop"))
    Traceback (most recent call last):
    ...
    ValueError: `remainder` must be one of 'apply', 'drop'; received remainder='keep'.
    """
    if value not in choices:
        accepted = ", ".join(repr(c) for c in choices)
        raise ValueError(_join(f"`{name}` must be one of {accepted}; {_received(name, value)}.", hint))
    return value


def check_output_folder(name: str, value: Any) -> str:
    """Returns `value` as a path if it names a folder that exists, or that can be created, to write in.

    Checked before any work, so that a long run does not end failing to save: the path must not be a
    file, the nearest folder above it that exists must be a folder, and that folder writable.

    Example:

    >>> import tempfile, os
    >>> check_output_folder("output_dir", os.path.join(tempfile.mkdtemp(), "new", "models")).endswith("models")
    True
    >>> check_output_folder("output_dir", __file__)
    Traceback (most recent call last):
    ...
    ValueError: `output_dir` must be a folder; received output_dir='...validation.py', an existing file.
    """
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"`{name}` must be a path; {_received(name, value)} of type {type(value).__name__}.")
    path = os.fspath(value)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"`{name}` must be a folder; {_received(name, path)}, an existing file.")
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ValueError(f"`{name}` cannot be created: {existing!r} is a file, not a folder; "
                         f"{_received(name, path)}.")
    failure = write_failure(existing)
    if failure:
        raise ValueError(f"`{name}` cannot be written: creating a file in {existing!r} failed ({failure}); "
                         f"{_received(name, path)}.")
    return path


def write_failure(folder: str) -> str:
    """Why no file can be created in the existing folder `folder`, or `""` when one can.

    A temporary file is created there and removed: `os.access` does not serve, since it answers
    yes for root, and for folders such as /proc, where nothing can be created.

    Example:

    >>> import tempfile
    >>> write_failure(tempfile.gettempdir())
    ''
    >>> write_failure("/proc")
    'No such file or directory'
    """
    try:
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
    except OSError as error:
        return error.strerror or str(error)
    return ""


def renamed_argument(owner: str, old_name: str, old_value: Any, new_name: str, new_value: Any,
                     default: Any) -> Any:
    """Returns the value of an argument that was renamed: `new_value`, or `old_value` with a
    `DeprecationWarning` when the caller (or a saved config) used the old name.

    Args:
        owner: the class or function taking the argument, for the messages.
        old_name: the deprecated name; `old_value` is `None` when it was not given.
        new_name: the current name; `new_value` is its value (`default` when not given).
        default: the current name's default, to tell whether both names were given.

    Raises:
        TypeError: if both names were given.

    Example:

    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     renamed_argument("f", "max_lr", 0.5, "max_learning_rate", 0.1, 0.1)
    0.5
    >>> str(caught[0].message)
    'f: `max_lr` is deprecated; use `max_learning_rate` (same meaning).'
    """
    if old_value is None:
        return new_value
    if new_value != default:
        raise TypeError(f"{owner}: pass `{new_name}` only; `{old_name}` is its deprecated name. Received "
                        f"{new_name}={new_value!r} and {old_name}={old_value!r}.")
    warnings.warn(f"{owner}: `{old_name}` is deprecated; use `{new_name}` (same meaning).", DeprecationWarning,
                  stacklevel=3)
    return old_value


def _check_range(name: str, value: float, minimum: float | None, maximum: float | None,
                 exclusive_minimum: bool, exclusive_maximum: bool, kind: str, hint: str) -> None:
    below = minimum is not None and (value <= minimum if exclusive_minimum else value < minimum)
    above = maximum is not None and (value >= maximum if exclusive_maximum else value > maximum)
    if not (below or above):
        return
    bounds = []
    if minimum is not None:
        bounds.append(f"{'>' if exclusive_minimum else '>='} {minimum}")
    if maximum is not None:
        bounds.append(f"{'<' if exclusive_maximum else '<='} {maximum}")
    raise ValueError(_join(f"`{name}` must be {kind} {' and '.join(bounds)}; "
                           f"{_received(name, value)}.", hint))


def _join(message: str, hint: str) -> str:
    return f"{message} {hint}" if hint else message
