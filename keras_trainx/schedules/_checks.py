"""Argument checks shared by the schedules: each error names the argument and says the fix."""

import numbers


def check_int(name, value, minimum):
    """Returns `value` if it is an integer >= `minimum`, else raises naming `name`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` must be a Python int; received {value!r} of type {type(value).__name__}.")
    if value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}; received {name}={value}.")
    return int(value)


def check_float(name, value, minimum=None, exclusive=False):
    """Returns `value` as a float if it is a real number above `minimum`, else raises naming `name`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a Python float; received {value!r} of type {type(value).__name__}.")
    if minimum is not None and (value <= minimum if exclusive else value < minimum):
        bound = ">" if exclusive else ">="
        raise ValueError(f"`{name}` must be {bound} {minimum}; received {name}={value}.")
    return float(value)
