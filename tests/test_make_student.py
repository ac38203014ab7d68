"""`make student` (tools/make_student.py): copies of the notebooks without solutions, exercise outputs cleared.

Every copy is checked statically (no solution text left, exercises and lesson kept); the copies of two notebooks
(00 and 04, one with value exercises, one with build-it exercises) are executed in full, in a fresh kernel, to show
that the copies still run through their exercises ("not answered yet"). The suite already runs every original under
nbval, and the copies differ from the originals only in the cells checked here.
"""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("make_student", ROOT / "tools" / "make_student.py")
make_student = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_student)

ORIGINALS = make_student.notebook_paths()
EXECUTED = ["00_welcome.ipynb", "04_lora_from_scratch.ipynb"]


@pytest.fixture(scope="module")
def copies(tmp_path_factory):
    outdir = tmp_path_factory.mktemp("student")
    written = make_student.make_student(outdir)
    return {path.name: path for path in written}


def _solution_only_lines(nb) -> set[str]:
    """Lines (stripped, non-trivial) that occur in the notebook's solution blocks and nowhere else in it."""
    solution, rest = set(), set()
    for cell in nb.cells:
        blocks = make_student.SOLUTION.findall(cell.source) if cell.cell_type == "markdown" else []
        for block in blocks:
            solution.update(line.strip() for line in block.splitlines())
        remainder = make_student.SOLUTION.sub("", cell.source) if blocks else cell.source
        rest.update(line.strip() for line in remainder.splitlines())
    trivial = {"", "```", "```python", "</details>", "<details><summary>Solution</summary>"}
    return {line for line in solution - rest if line not in trivial and len(line) > 3}


def _output_text(output) -> str:
    return str(output.get("text", "")) + str(output.get("data", {}).get("text/plain", ""))


def _check_cells(nb):
    return [cell for cell in nb.cells if cell.cell_type == "code" and make_student.CHECK_CALL.search(cell.source)]


def test_every_notebook_has_a_student_copy(copies):
    assert ORIGINALS, "no notebooks found"
    assert sorted(copies) == [path.name for path in ORIGINALS]


@pytest.mark.parametrize("original", ORIGINALS, ids=lambda p: p.stem)
def test_no_solution_text_remains(copies, original):
    nb = nbformat.read(original, as_version=4)
    student = nbformat.read(copies[original.name], as_version=4)
    text = "\n".join(cell.source for cell in student.cells)
    assert not re.search(r"<summary>\s*Solution", text, re.IGNORECASE), "a solution block is left"
    hidden = _solution_only_lines(nb)
    assert hidden, f"{original.name}: no solution lines found in the original (has the markup changed?)"
    student_lines = {line.strip() for line in text.splitlines()}
    for cell in student.cells:
        for output in cell.get("outputs", []):
            student_lines.update(line.strip() for line in _output_text(output).splitlines())
    left = sorted(hidden & student_lines)
    assert not left, f"{original.name}: solution lines left in the student copy: {left[:3]}"


@pytest.mark.parametrize("original", ORIGINALS, ids=lambda p: p.stem)
def test_exercises_kept_outputs_cleared_lesson_unchanged(copies, original):
    nb = nbformat.read(original, as_version=4)
    student = nbformat.read(copies[original.name], as_version=4)
    checks = _check_cells(student)
    assert len(checks) == len(_check_cells(nb)) >= 3, "every exercise cell is kept"
    for cell in checks:
        assert cell.outputs == [] and cell.execution_count is None, f"exercise output left: {cell.source[:60]!r}"
    # Every exercise's statement survives (it often shares a markdown cell with the previous solution).
    statements = re.findall(r"\*\*Exercise \d+", "\n".join(c.source for c in nb.cells if c.cell_type == "markdown"))
    kept = re.findall(r"\*\*Exercise \d+", "\n".join(c.source for c in student.cells if c.cell_type == "markdown"))
    assert kept == statements
    # The lesson (everything before the exercises) is untouched, stored outputs included.
    lesson = [c for c in nb.cells if c.cell_type == "code" and not make_student.CHECK_CALL.search(c.source)]
    lesson_copy = [c for c in student.cells if c.cell_type == "code" and not make_student.CHECK_CALL.search(c.source)]
    assert [c.source for c in lesson_copy] == [c.source for c in lesson]
    first_exercise = next(i for i, c in enumerate(nb.cells) if c in _check_cells(nb))
    before = [c for c in nb.cells[:first_exercise] if c.cell_type == "code"]
    assert all(c.outputs == s.outputs for c, s in zip(before, lesson_copy)), "a lesson cell lost its outputs"


def test_a_solution_shared_with_the_next_exercise_keeps_the_exercise():
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("## Exercises\n**Exercise 1.** Compute it."),
        nbformat.v4.new_code_cell("answer = ...\nnb99.check_it(answer)", outputs=[
            nbformat.v4.new_output("stream", name="stdout", text="not answered yet\n")], execution_count=3),
        nbformat.v4.new_markdown_cell("<details><summary>Solution</summary>\n\n```python\nanswer = 42\n```\n"
                                      "</details>\n\n**Exercise 2.** Next one."),
        nbformat.v4.new_markdown_cell("<details><summary>Solution</summary>\nsecret\n</details>"),
    ])
    student = make_student.student_copy(nb)
    assert [c.source for c in student.cells] == ["## Exercises\n**Exercise 1.** Compute it.",
                                                 "answer = ...\nnb99.check_it(answer)", "**Exercise 2.** Next one."]
    assert student.cells[1].outputs == [] and student.cells[1].execution_count is None
    assert nb.cells[1].outputs, "the original is not changed"


def test_no_notebooks_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no notebooks"):
        make_student.make_student(tmp_path / "out", notebooks=[])


@pytest.mark.parametrize("name", EXECUTED)
def test_student_copy_runs_through_its_exercises(copies, name):
    from nbclient import NotebookClient

    path = copies[name]
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", allow_errors=False,
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    checks = _check_cells(nb)
    assert checks
    for cell in checks:
        text = "".join(_output_text(o) for o in cell.outputs)
        assert "not answered yet" in text, f"{name}: {cell.source[:50]!r} printed {text[:120]!r}"
        assert not any(o.output_type == "error" for o in cell.outputs)
