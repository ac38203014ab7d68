"""Static checks of every stored notebook: what nbval alone does not catch.

Each failure names the notebook and the cell (cell numbers count from 0, markdown cells included).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lora_edu.course import course_status

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
NAME = re.compile(r"^(\d{2})_[a-z0-9]+(?:_[a-z0-9]+)*\.ipynb$")
MAX_OUTPUT_BYTES = 1_000_000
MAX_NOTEBOOK_BYTES = 5_000_000
LOCAL_PATH = re.compile(r"(/tmp/|/root/|/home/[a-z_][a-z0-9_-]*/|/Users/[A-Za-z]|/work/|[A-Z]:\\\\Users|"
                        + re.escape(str(ROOT)) + ")")

# The rule for `# NBVAL_IGNORE_OUTPUT`: a cell may opt out of output comparison only if it
#   (a) displays a widget (its stored output holds a widget view),
#   (b) shows a timing (it calls a clock: time.perf_counter/time.time/timeit, or a lora_edu time_*/measure_* helper), or
#   (c) asserts its own result (it contains an `assert`), so the claim is still checked when the numbers differ
#       by device or thread count.
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
TIMING = re.compile(r"\b(perf_counter|time\.time|time\.monotonic|timeit|time_[a-z_]+|measure_[a-z_]+)\s*\(|%%?timeit|%%?time\b")
ASSERTION = re.compile(r"^\s*assert\b", re.M)


def source(cell) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def code_cells(nb):
    return [(i, c) for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"]


def test_there_are_notebooks():
    assert NOTEBOOKS, f"no notebooks found in {NOTEBOOK_DIR.name}/"


def test_names_follow_the_course_map_in_reading_order():
    stems = [p.stem for p in NOTEBOOKS]
    bad = [p.name for p in NOTEBOOKS if not NAME.match(p.name)]
    assert not bad, f"names must be NN_snake_case.ipynb: {bad}"
    numbers = [int(NAME.match(p.name).group(1)) for p in NOTEBOOKS]
    assert len(set(numbers)) == len(numbers), f"two notebooks share a number: {stems}"
    written = [stem for stem, _, _, ready in course_status() if ready]
    assert stems == written, (f"notebooks/ must hold exactly the notebooks that lora_edu.course marks as written, "
                              f"in map order: missing {sorted(set(written) - set(stems))}, "
                              f"not on the map or marked coming {sorted(set(stems) - set(written))}")


@pytest.fixture(params=NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def notebook(request):
    return request.param, load(request.param)


def test_every_code_cell_executed_in_order_with_outputs_stored(notebook):
    path, nb = notebook
    counts = []
    for i, cell in code_cells(nb):
        if not source(cell).strip():
            continue
        count = cell.get("execution_count")
        assert count is not None, (f"{path.name} cell {i} was not executed: nbval would silently skip its "
                                   "comparison; run `make outputs`")
        counts.append((i, count))
    for (i_prev, prev), (i, count) in zip(counts, counts[1:]):
        assert count == prev + 1, (f"{path.name} cell {i} has execution count {count} after {prev} (cell {i_prev}): "
                                   "it was not run top to bottom in one fresh kernel; run `make outputs`")
    assert counts and counts[0][1] == 1, f"{path.name}: the first code cell must be execution 1 (fresh kernel)"


def test_no_error_outputs_except_tagged_cells(notebook):
    path, nb = notebook
    for i, cell in code_cells(nb):
        tagged = "raises-exception" in cell.get("metadata", {}).get("tags", [])
        errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
        if errors and not tagged:
            e = errors[0]
            pytest.fail(f"{path.name} cell {i} stores an error {e.get('ename')}: {e.get('evalue', '')[:100]}")
        if tagged:
            assert errors, f"{path.name} cell {i} is tagged raises-exception but stores no error"


def test_no_stderr_in_stored_outputs(notebook):
    path, nb = notebook
    for i, cell in code_cells(nb):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and out.get("name") == "stderr":
                text = "".join(out.get("text", ""))
                pytest.fail(f"{path.name} cell {i} stores stderr (warnings or progress bars differ by run and "
                            f"device): {text.strip()[:120]!r}")


def test_no_machine_local_paths(notebook):
    path, nb = notebook
    for i, cell in enumerate(nb["cells"]):
        blob = source(cell) + json.dumps(cell.get("outputs", []))
        match = LOCAL_PATH.search(blob)
        assert not match, f"{path.name} cell {i} holds a machine-local path: {match.group(0)!r}"


def test_sizes(notebook):
    path, nb = notebook
    assert path.stat().st_size <= MAX_NOTEBOOK_BYTES, f"{path.name} is {path.stat().st_size:,} bytes (max 5 MB)"
    for i, cell in code_cells(nb):
        size = len(json.dumps(cell.get("outputs", [])))
        assert size <= MAX_OUTPUT_BYTES, f"{path.name} cell {i} stores {size:,} bytes of output (max 1 MB)"


def test_anatomy(notebook):
    path, nb = notebook
    cells = nb["cells"]
    first = source(cells[0])
    assert cells[0]["cell_type"] == "markdown" and first.startswith("# "), \
        f"{path.name} cell 0 must be a markdown title '# ...'"
    opening = "\n".join(source(c) for c in cells[:3] if c["cell_type"] == "markdown")
    assert re.search(r"^#+ What you will learn", opening, re.M), \
        f"{path.name}: 'What you will learn' must be among the first cells"
    headings = [(i, line) for i, c in enumerate(cells) if c["cell_type"] == "markdown"
                for line in source(c).splitlines() if re.match(r"^#{1,3} ", line)]
    titles = [re.sub(r"^#+\s*", "", line).strip().lower() for _, line in headings]
    assert any(t.startswith("exercises") for t in titles), f"{path.name} has no 'Exercises' section"
    assert titles and titles[-1].startswith("references"), \
        f"{path.name} must end with a 'References' section (last heading is {titles[-1] if titles else None!r})"
    exercise_at = next(i for (i, _), t in zip(headings, titles) if t.startswith("exercises"))
    reference_at = headings[-1][0]
    assert exercise_at < reference_at, f"{path.name}: Exercises must come before References"
    exercise_checks = [i for i, c in code_cells(nb) if exercise_at < i < reference_at]
    assert len(exercise_checks) >= 3, \
        f"{path.name} has {len(exercise_checks)} exercise code cells; the course asks for at least 3"


def ignore_rule_violation(cell) -> str | None:
    lines = source(cell).splitlines()
    marked = [l for l in lines if l.strip().startswith("#") and "NBVAL_IGNORE_OUTPUT" in l]
    if not marked:
        return None
    if any(l.strip() != "# NBVAL_IGNORE_OUTPUT" for l in marked):
        return "carries '# NBVAL_IGNORE_OUTPUT' with extra text, which nbval does not recognise"
    shows_widget = any(WIDGET_MIME in o.get("data", {}) for o in cell.get("outputs", []))
    if shows_widget or TIMING.search(source(cell)) or ASSERTION.search(source(cell)):
        return None
    return ("ignores its output but neither displays a widget, shows a timing, nor asserts its result; "
            "compare its output, or assert the claim it shows")


def test_nbval_ignore_output_only_where_the_rule_allows(notebook):
    path, nb = notebook
    problems = [f"{path.name} cell {i} {why}" for i, c in code_cells(nb) if (why := ignore_rule_violation(c))]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("src, outputs, allowed", [
    ("# NBVAL_IGNORE_OUTPUT\nprint(loss)", [], False),
    ("# NBVAL_IGNORE_OUTPUT because noisy\nassert x", [], False),
    ("# NBVAL_IGNORE_OUTPUT\nprint(loss)\nassert loss < 1", [], True),
    ("# NBVAL_IGNORE_OUTPUT\nt = time.perf_counter()", [], True),
    ("# NBVAL_IGNORE_OUTPUT\nlat = measure_latency(model)", [], True),
    ("# NBVAL_IGNORE_OUTPUT\nexplorer", [{"output_type": "display_data", "data": {WIDGET_MIME: {}}}], True),
    ("print(1)", [], True),
])
def test_the_ignore_rule_itself(src, outputs, allowed):
    cell = {"cell_type": "code", "source": src, "outputs": outputs}
    assert (ignore_rule_violation(cell) is None) == allowed
