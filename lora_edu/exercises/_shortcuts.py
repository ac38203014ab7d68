"""Run a learner's function and note which forbidden shortcuts it called (for the build-it checks).

A build-it exercise asks the learner to write something the course already has (a truncated SVD, a numerical
rank); calling the ready-made one would pass every case without teaching anything. `run_watched` runs the
function under ``sys.setprofile`` and reports every forbidden function it called, however it was imported.
"""
from __future__ import annotations

import sys


def _code_of(function):
    """The code object a Python function (or a NumPy dispatcher around one) runs; None for a builtin."""
    function = getattr(function, "_implementation", function)  # numpy's array-function dispatchers
    function = getattr(function, "__func__", function)          # bound methods
    return getattr(function, "__code__", None)


def run_watched(function, args, forbidden: dict):
    """``(result, called)``: ``function(*args)`` and the labels of the ``forbidden`` functions it called.

    ``forbidden`` maps a label ("numpy.linalg.matrix_rank") to the function object; Python functions are
    recognised by their code, builtins (torch's) by identity. Exceptions of ``function`` propagate.
    """
    by_code = {code: label for label, f in forbidden.items() if (code := _code_of(f)) is not None}
    by_object = {id(f): label for label, f in forbidden.items() if _code_of(f) is None}
    called: list[str] = []

    def profile(frame, event, arg):
        label = None
        if event == "call":
            label = by_code.get(frame.f_code)
        elif event == "c_call":
            label = by_object.get(id(arg))
        if label is not None and label not in called:
            called.append(label)

    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        result = function(*args)
    finally:
        sys.setprofile(previous)
    return result, called


def loaded(module: str, attribute: str):
    """``module.attribute`` if the module is already imported (a learner who used it has imported it), else None."""
    found = sys.modules.get(module)
    for part in attribute.split("."):
        found = getattr(found, part, None)
    return found
