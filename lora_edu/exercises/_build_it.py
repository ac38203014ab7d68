"""Helpers for build-it exercises (the learner writes a function, the check runs it).

Forbidden shortcuts: while a learner's function runs, the package functions the task
forbids (``counting.lora_params`` in notebook 03, ``layer(x)`` or ``merge_lora`` in notebook 04) raise
`ForbiddenCall` instead of answering, so a solution that calls them fails with a message saying so."""
from __future__ import annotations

import contextlib


class ForbiddenCall(Exception):
    """Raised inside the learner's function when it calls something the exercise forbids."""


@contextlib.contextmanager
def forbidding(function, shortcuts):
    """While the ``with`` block runs, every ``(owner, attribute, what)`` in ``shortcuts`` (a module, class or object
    and the name of a function on it) raises `ForbiddenCall` saying ``what`` is forbidden; so does any global name
    of ``function`` bound to one of those functions (``from lora_edu.counting import lora_params``). Yields a list
    that collects ``what`` for each forbidden call, even one the learner's code catches. Everything is restored
    afterwards."""
    calls, restore = [], []

    def blocker(what):
        def blocked(*args, **kwargs):
            calls.append(what)
            raise ForbiddenCall(what)
        return blocked

    originals = {}
    for owner, attribute, what in shortcuts:
        had_own = attribute in vars(owner)
        original = vars(owner)[attribute] if had_own else getattr(owner, attribute)
        originals[id(getattr(owner, attribute))] = what
        restore.append((owner, attribute, had_own, original))
    for owner, attribute, what in shortcuts:
        setattr(owner, attribute, blocker(what))
    namespace = getattr(function, "__globals__", {})
    bound = [(name, value) for name, value in namespace.items() if id(value) in originals]
    try:
        for name, value in bound:
            namespace[name] = blocker(originals[id(value)])
        yield calls
    finally:
        for name, value in bound:
            namespace[name] = value
        for owner, attribute, had_own, original in reversed(restore):
            if had_own:
                setattr(owner, attribute, original)
            else:
                delattr(owner, attribute)


def run_forbidding(function, shortcuts, *args):
    """``function(*args)`` with ``shortcuts`` forbidden (see `forbidding`): returns ``(result, forbidden, error)``,
    ``forbidden`` the first forbidden call made (or None) and ``error`` what else the function raised (or None)."""
    with forbidding(function, shortcuts) as calls:
        try:
            result, error = function(*args), None
        except ForbiddenCall:
            result, error = None, None
        except Exception as raised:  # the learner's code: report whatever it raised
            result, error = None, raised
    return result, (calls[0] if calls else None), error


def is_stub(function) -> bool:
    """True for a function whose body is only ``...`` (or ``pass``): the exercise is not answered yet."""
    def stub(*args): ...
    code = getattr(function, "__code__", None)
    return code is not None and code.co_code == stub.__code__.co_code and code.co_consts == stub.__code__.co_consts


__all__ = ["ForbiddenCall", "forbidding", "run_forbidding", "is_stub"]
