"""Checking arguments, in one place: each helper returns the value (converted) or raises an error that names
the parameter, says what is allowed and shows what it got. Used by every module of the package, so the math
there stays readable: ``r = _validate.integer("r", r, minimum=1)``.

- ``TypeError`` when the kind of value is wrong (a str, None or a bool where a number belongs);
- ``ValueError`` when the kind is right but the value is not allowed (out of range, NaN, not a choice).
"""
from __future__ import annotations

import math
import numbers
import os
from pathlib import Path

import torch
from torch import nn


def _got(value) -> str:
    return f"got {type(value).__name__} {value!r}"


def _show(bound) -> str:
    return str(bound) if isinstance(bound, numbers.Integral) else f"{bound:g}"


def _bounds(minimum, maximum, *, open_min: bool = False, open_max: bool = False) -> str:
    parts = []
    if minimum is not None:
        parts.append(f"{'>' if open_min else '>='} {_show(minimum)}")
    if maximum is not None:
        parts.append(f"{'<' if open_max else '<='} {_show(maximum)}")
    return " and ".join(parts)


def integer(name: str, value, minimum: int | None = None, maximum: int | None = None, *, hint: str = "") -> int:
    """``value`` as an int, which must lie in ``[minimum, maximum]`` (either may be None). Bools are refused."""
    wanted = " ".join(p for p in ("an int", _bounds(minimum, maximum), hint) if p)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be {wanted}, {_got(value)}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be {wanted}, got {value}")
    return int(value)


def real(name: str, value, minimum: float | None = None, maximum: float | None = None, *,
         open_min: bool = False, open_max: bool = False, hint: str = "", tensors: bool = True) -> float:
    """``value`` as a finite float in the interval given by ``minimum``/``maximum`` (closed unless
    ``open_min``/``open_max``). Bools, strings, None and NaN/inf are refused; 0-d tensors are accepted unless
    ``tensors=False``."""
    if tensors and isinstance(value, torch.Tensor) and value.dim() == 0 and not value.dtype.is_complex:
        value = value.item()
    wanted = " ".join(p for p in ("a finite number", _bounds(minimum, maximum, open_min=open_min,
                                                             open_max=open_max), hint) if p)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {wanted}, {_got(value)}")
    value = float(value)
    if (not math.isfinite(value)
            or (minimum is not None and (value <= minimum if open_min else value < minimum))
            or (maximum is not None and (value >= maximum if open_max else value > maximum))):
        raise ValueError(f"{name} must be {wanted}, got {value!r}")
    return value


def positive(name: str, value, *, hint: str = "", tensors: bool = True) -> float:
    """A finite number > 0, as a float."""
    return real(name, value, 0, open_min=True, hint=hint, tensors=tensors)


def boolean(name: str, value) -> bool:
    """``True`` or ``False`` exactly (not 1, not "yes")."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, {_got(value)}")
    return value


def choice(name: str, value, allowed):
    """``value`` if it is one of ``allowed``, else ValueError listing them."""
    try:
        ok = value in allowed
    except TypeError:  # an unhashable value tested against a set or dict
        ok = False
    if not ok:
        raise ValueError(f"{name}={value!r} is not allowed; allowed values: {', '.join(map(repr, allowed))}")
    return value


def instance(name: str, value, kind, what: str):
    """``value`` if it is an instance of ``kind`` (a class or a tuple of classes), else TypeError saying
    ``{name} must be {what}``."""
    if not isinstance(value, kind):
        raise TypeError(f"{name} must be {what}, got {type(value).__name__}")
    return value


def module(name: str, value) -> nn.Module:
    """A ``torch.nn.Module``."""
    return instance(name, value, nn.Module, "a torch.nn.Module")


def folder(name: str, value) -> Path:
    """A str or os.PathLike, as a Path (not checked for existence)."""
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name} must be a str or a path (os.PathLike), got {type(value).__name__}")
    return Path(value)


def sequence(name: str, values, *, what: str = "values") -> tuple:
    """A non-empty list or tuple (not a str) as a tuple."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise TypeError(f"{name} must be a non-empty list of {what}, got {type(values).__name__}")
    values = tuple(values)
    if not values:
        raise ValueError(f"{name} must be a non-empty list of {what}, got an empty list")
    return values


def integers(name: str, values, minimum: int = 1, *, unique: bool = True) -> tuple[int, ...]:
    """A non-empty list of ints >= ``minimum`` (without repeats when ``unique``), as a tuple."""
    values = tuple(integer(f"each of {name}", v, minimum)
                   for v in sequence(name, values, what=f"ints >= {minimum}"))
    if unique and len(set(values)) != len(values):
        raise ValueError(f"{name} must not repeat a value, got {values}")
    return values


def positives(name: str, values) -> tuple[float, ...]:
    """A non-empty list of finite numbers > 0, as a tuple of floats."""
    return tuple(positive(f"each of {name}", v) for v in sequence(name, values, what="positive numbers"))
