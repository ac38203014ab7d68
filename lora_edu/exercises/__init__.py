"""The checks behind each notebook's exercises: ``lora_edu.exercises.nb01`` for notebook 01, and so on.

Each check takes the learner's answer (``...`` while unanswered) and returns a
`lora_edu.checks.CheckResult` that says what is right, or what is wrong: its direction, a coarse size and a hint,
never the expected value. ``lora_edu.checks.reveal(check, *inputs)`` shows the value on request.
"""
import importlib


def __getattr__(name: str):
    # `lora_edu.exercises.nb04` works without importing every notebook's checks up front.
    if name.startswith("nb") and name[2:].isdigit():
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
