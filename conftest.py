"""Test-suite wiring shared by the unit tests and the notebooks run under nbval.

- Anchors the nbval sanitize file to the repository root, so ``pytest`` works from any folder.
- Times every notebook (kernel start included), prints the runtime table at the end of the run and writes it
  to ``.test-reports/notebook-times.txt`` (or to ``LORA_EDU_TIMES_FILE``).
- Fails the cell at which a notebook passes its budget: ``LORA_EDU_NOTEBOOK_BUDGET_S`` seconds (default 120,
  a guard; the target is 60 s on 2 CPU cores).
"""
from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
TARGET_S = 60.0
BUDGET_ENV_VAR = "LORA_EDU_NOTEBOOK_BUDGET_S"
REPORT_ENV_VAR = "LORA_EDU_TIMES_FILE"  # where the table is written; default .test-reports/notebook-times.txt

_seconds: "OrderedDict[str, float]" = OrderedDict()  # for the table: every phase, as reported (xdist too)
_running: dict[str, float] = {}  # for the budget: setup + call so far, where the notebook runs
_over_budget: set[str] = set()


def notebook_budget_s() -> float:
    raw = os.environ.get(BUDGET_ENV_VAR, "120")
    try:
        budget = float(raw)
    except ValueError:
        raise pytest.UsageError(f"{BUDGET_ENV_VAR}={raw!r} is not a number of seconds") from None
    if budget <= 0:
        raise pytest.UsageError(f"{BUDGET_ENV_VAR}={raw!r} must be a positive number of seconds")
    return budget


def pytest_configure(config):
    sanitize = getattr(config.option, "nbval_sanitize_with", None)
    if sanitize and not os.path.isabs(sanitize):
        config.option.nbval_sanitize_with = str(ROOT / sanitize)
    config._lora_edu_budget = notebook_budget_s()


def _notebook_of(nodeid: str) -> str | None:
    path = nodeid.split("::", 1)[0]
    return path if path.endswith(".ipynb") else None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    notebook = _notebook_of(item.nodeid)
    if notebook is None or call.when == "teardown":
        return
    _running[notebook] = _running.get(notebook, 0.0) + call.duration
    report = outcome.get_result()
    budget = item.config._lora_edu_budget
    if call.when == "call" and _running[notebook] > budget and notebook not in _over_budget:
        _over_budget.add(notebook)
        report.outcome = "failed"
        report.longrepr = (f"{notebook} has run {_running[notebook]:.1f} s, over its budget of "
                           f"{budget:g} s ({BUDGET_ENV_VAR}); the target is {TARGET_S:.0f} s on 2 CPU cores.")


def pytest_runtest_logreport(report):
    notebook = _notebook_of(report.nodeid)
    if notebook is not None:
        _seconds[notebook] = _seconds.get(notebook, 0.0) + report.duration


def runtime_table(budget: float) -> str:
    lines = [f"{'notebook':<46} {'seconds':>8}  status (target {TARGET_S:.0f} s, budget {budget:g} s)"]
    for notebook, seconds in _seconds.items():
        status = ("OVER BUDGET" if seconds > budget else
                  "over target" if seconds > TARGET_S else "ok")
        lines.append(f"{Path(notebook).name:<46} {seconds:8.1f}  {status}")
    lines.append(f"{'whole course':<46} {sum(_seconds.values()):8.1f}  (target 360 s)")
    return "\n".join(lines)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _seconds:
        return
    table = runtime_table(config._lora_edu_budget)
    terminalreporter.section("notebook run times (kernel start included)")
    terminalreporter.write_line(table)
    report_path = Path(os.environ.get(REPORT_ENV_VAR) or ROOT / ".test-reports" / "notebook-times.txt")
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(table + "\n", encoding="utf-8")
