"""Argument checks shared by every public call: each error names the argument, the value and what is accepted.

The rule everywhere: a wrong *type* raises TypeError, a value of the right type that is out of range or
empty raises ValueError, a missing file raises FileNotFoundError. Checks run before any heavy work and
before anything is written.
"""

from __future__ import annotations

import math
import numbers
import operator
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

MAX_SEED = 2**63 - 1  # torch.manual_seed and numpy accept up to 2**64 - 1; a signed 64-bit int is portable


def show(value: Any, limit: int = 80) -> str:
    """`repr(value)` cut to `limit` characters, for error messages."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def check_int(name: str, value: Any, *, minimum: int | None = None, maximum: int | None = None,
              none_ok: bool = False) -> int | None:
    """An integer (numpy integers included, bool refused) within [minimum, maximum]."""
    if value is None and none_ok:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        accepted = "an integer" + (" or None" if none_ok else "")
        raise TypeError(f"{name}={show(value)} ({type(value).__name__}) is not accepted: {accepted} is")
    value = operator.index(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{name}={value} is out of range: {_range_text(minimum, maximum)} is accepted")
    return value


def check_float(name: str, value: Any, *, minimum: float | None = None, maximum: float | None = None,
                above: float | None = None, none_ok: bool = False) -> float | None:
    """A finite real number (ints accepted, bool refused) in range; `above` is an exclusive lower bound."""
    if value is None and none_ok:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        accepted = "a number" + (" or None" if none_ok else "")
        raise TypeError(f"{name}={show(value)} ({type(value).__name__}) is not accepted: {accepted} is")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name}={value} is not accepted: a finite number is")
    if above is not None and value <= above:
        upper = f" and at most {maximum}" if maximum is not None else ""
        raise ValueError(f"{name}={value} is out of range: a number greater than {above}{upper} is accepted")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{name}={value} is out of range: {_range_text(minimum, maximum, 'a number')} is accepted")
    return value


def check_bool(name: str, value: Any, *, none_ok: bool = False) -> bool | None:
    """True or False (numpy bools accepted); anything else is refused rather than read as truthy."""
    if value is None and none_ok:
        return None
    if type(value).__name__ == "bool_":  # numpy.bool_
        return bool(value)
    if not isinstance(value, bool):
        raise TypeError(f"{name}={show(value)} ({type(value).__name__}) is not accepted: True or False is"
                        + (" (or None)" if none_ok else ""))
    return value


def check_str(name: str, value: Any, *, empty_ok: bool = False, none_ok: bool = False) -> str | None:
    """A string; empty refused unless empty_ok."""
    if value is None and none_ok:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{name}={show(value)} ({type(value).__name__}) is not accepted: a string is"
                        + (" (or None)" if none_ok else ""))
    if not value and not empty_ok:
        raise ValueError(f"{name}='' is empty: a non-empty string is accepted")
    return value


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> Any:
    """One of `choices` (TypeError for an unhashable value, ValueError for any other miss)."""
    choices = list(choices)
    try:
        ok = value in choices
    except TypeError:
        ok = False
    if not ok:
        error = ValueError if isinstance(value, type(choices[0])) else TypeError
        raise error(f"{name}={show(value)} is not accepted: one of {', '.join(map(repr, choices))} is")
    return value


def check_seed(name: str, value: Any, *, none_ok: bool = True) -> int | None:
    """A seed: an integer in [0, 2**63 - 1], or None (draw one) when none_ok."""
    return check_int(name, value, minimum=0, maximum=MAX_SEED, none_ok=none_ok)


def _range_text(minimum, maximum, what: str = "an integer") -> str:
    if minimum is not None and maximum is not None:
        return f"{what} from {minimum} to {maximum}"
    if minimum is not None:
        return f"{what} of at least {minimum}"
    if maximum is not None:
        return f"{what} of at most {maximum}"
    return what


def check_path(name: str, value: Any) -> Path:
    """A file or folder path (str or os.PathLike), not empty: `save("")` would write into the working folder."""
    if isinstance(value, bool) or not isinstance(value, str | os.PathLike):
        raise TypeError(f"{name}={show(value)} ({type(value).__name__}) is not accepted: a path (str or Path) is")
    if not str(value).strip():
        raise ValueError(f"{name}={str(value)!r} is not accepted: a non-empty path naming the file or folder is")
    return Path(value)
