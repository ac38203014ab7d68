"""Helpers for the build-it exercises: the learner writes a function, the check runs it on cases of its own.

A build-it exercise asks for something the course already has (a numerical rank, a truncated SVD, a savings
calculator, LoRA's forward pass, merge and unmerge); calling the ready-made one would pass every case without
teaching anything. The check runs the learner's function under ``sys.setprofile`` and notes every forbidden
function it called, however it was imported (``from lora_edu.counting import lora_params``, ``layer(x)``), without
changing any module. Used by ``lora_edu.exercises.nb01`` ... ``nb04``.
"""
from __future__ import annotations

import inspect
import sys

__all__ = ["run_watched", "run_forbidding", "loaded", "is_stub"]


def _code_of(function):
    """The code object a Python function (or a NumPy dispatcher around one) runs; None for a builtin."""
    function = getattr(function, "_implementation", function)  # numpy's array-function dispatchers
    function = getattr(function, "__func__", function)          # bound methods
    function = inspect.unwrap(function)                         # decorators (torch.no_grad share one wrapper)
    return getattr(function, "__code__", None)


def _run(function, args, forbidden: dict, called: list):
    """``function(*args)``, appending to ``called`` the label of each ``forbidden`` function it calls (Python
    functions recognised by their code, builtins such as torch's by identity). Exceptions propagate."""
    by_code = {code: label for label, f in forbidden.items() if (code := _code_of(f)) is not None}
    by_object = {id(f): label for label, f in forbidden.items() if _code_of(f) is None}

    def profile(frame, event, arg):
        label = by_code.get(frame.f_code) if event == "call" else by_object.get(id(arg)) if event == "c_call" else None
        if label is not None and label not in called:
            called.append(label)

    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        return function(*args)
    finally:
        sys.setprofile(previous)


def run_watched(function, args, forbidden: dict):
    """``(result, called)``: ``function(*args)`` and the labels of the ``forbidden`` functions it called, in order.
    ``forbidden`` maps a label ("numpy.linalg.matrix_rank") to the function. Exceptions of ``function`` propagate."""
    called: list[str] = []
    return _run(function, args, forbidden, called), called


def run_forbidding(function, shortcuts, *args):
    """``(result, forbidden, error)`` of ``function(*args)``: ``shortcuts`` lists ``(owner, attribute, what)``
    (a module or class, the name of a function on it, and how to describe calling it); ``forbidden`` is the
    ``what`` of the first one called (or None), ``error`` whatever else the function raised (or None), in which
    case ``result`` is None."""
    called: list[str] = []
    forbidden = {what: getattr(owner, attribute) for owner, attribute, what in shortcuts}
    try:
        result, error = _run(function, args, forbidden, called), None
    except Exception as raised:  # the learner's code: report whatever it raised
        result, error = None, raised
    return result, (called[0] if called else None), error


def loaded(module: str, attribute: str):
    """``module.attribute`` if the module is already imported (a learner who used it has imported it), else None."""
    found = sys.modules.get(module)
    for part in attribute.split("."):
        found = getattr(found, part, None)
    return found


def is_stub(function) -> bool:
    """True for a function whose body is only ``...`` (or ``pass``): the exercise is not answered yet."""
    def stub(*args): ...
    code = getattr(function, "__code__", None)
    return code is not None and code.co_code == stub.__code__.co_code and code.co_consts == stub.__code__.co_consts
