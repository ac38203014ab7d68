"""The notebook time guard of conftest.py: a notebook over LORA_EDU_NOTEBOOK_BUDGET_S fails, and the run prints
and writes the runtime table. Runs pytest on 00_welcome in a subprocess."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WELCOME = "notebooks/00_welcome.ipynb"


def run_pytest(tmp_path, budget: str):
    env = dict(os.environ, LORA_EDU_NOTEBOOK_BUDGET_S=budget, LORA_EDU_TIMES_FILE=str(tmp_path / "times.txt"))
    env.pop("PYTEST_ADDOPTS", None)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", WELCOME], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_a_notebook_over_budget_fails_and_the_table_says_so(tmp_path):
    done = run_pytest(tmp_path, "0.5")
    assert done.returncode == 1, done.stdout[-2000:]
    assert "00_welcome.ipynb has run" in done.stdout and "over its budget of 0.5 s" in done.stdout
    table = (tmp_path / "times.txt").read_text()
    assert "00_welcome.ipynb" in table and "OVER BUDGET" in table and "whole course" in table


def test_within_budget_passes_and_reports_the_time(tmp_path):
    done = run_pytest(tmp_path, "300")
    assert done.returncode == 0, done.stdout[-2000:]
    row = next(line for line in (tmp_path / "times.txt").read_text().splitlines() if line.startswith("00_welcome"))
    seconds, status = row.split()[1], row.split()[2]
    assert float(seconds) > 0 and status == "ok"


def test_a_budget_that_is_not_a_number_is_a_usage_error(tmp_path):
    done = run_pytest(tmp_path, "fast")
    assert done.returncode == 4  # pytest's usage error
    assert "LORA_EDU_NOTEBOOK_BUDGET_S='fast' is not a number of seconds" in done.stderr + done.stdout
