"""Student copies of the notebooks: solutions removed, exercise outputs cleared (``make student``).

Usage: python tools/make_student.py [OUTDIR]   (default: student/, git-ignored)

For every notebooks/NN_*.ipynb it writes OUTDIR/NN_*.ipynb where
- each ``<details><summary>Solution</summary> ... </details>`` block is cut out of its markdown cell (the rest of the
  cell, often the next exercise's text, stays; a cell left empty is dropped);
- every code cell of the exercises (from the ``## Exercises`` heading on, and any cell that calls a
  ``check_...`` of ``lora_edu.exercises``) has its outputs and execution count cleared;
- everything else, the stored outputs of the lesson included, is kept as it is.
The copies run in the same folder layout as the originals (they only import ``lora_edu``), so students open them
with ``cd student && jupyter lab`` in the course's environment.
"""
from __future__ import annotations

import copy as copy_module
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
SOLUTION = re.compile(r"<details>\s*<summary>\s*Solution\s*</summary>.*?</details>[ \t]*\n?", re.DOTALL | re.IGNORECASE)
EXERCISES_HEADING = re.compile(r"^##\s+Exercises\b", re.MULTILINE)
CHECK_CALL = re.compile(r"\bnb\d\d\.check_\w+\s*\(")


def notebook_paths(folder: Path = NOTEBOOKS) -> list[Path]:
    """The course's notebooks in folder, in course order (NN_name.ipynb)."""
    return sorted(folder.glob("[0-9][0-9]_*.ipynb"))


def is_exercise_cell(cell, in_exercises: bool) -> bool:
    """A code cell of the exercises: inside the Exercises section, or calling an exercise check."""
    return cell.cell_type == "code" and (in_exercises or bool(CHECK_CALL.search(cell.source)))


def student_copy(nb):
    """Return a new notebook: solution blocks removed, exercise cells' outputs cleared (nb is not changed)."""
    copy = copy_module.deepcopy(nb)
    cells = []
    in_exercises = False
    for cell in copy.cells:
        if cell.cell_type == "markdown":
            if EXERCISES_HEADING.search(cell.source):
                in_exercises = True
            if SOLUTION.search(cell.source):
                cell.source = SOLUTION.sub("", cell.source).strip("\n")
                if not cell.source.strip():
                    continue
        elif is_exercise_cell(cell, in_exercises):
            cell.outputs = []
            cell.execution_count = None
        cells.append(cell)
    copy.cells = cells
    copy.metadata.pop("widgets", None)
    return copy


def make_student(outdir: Path, notebooks: list[Path] | None = None) -> list[Path]:
    """Write the student copy of each notebook into outdir; returns the written paths."""
    paths = notebook_paths() if notebooks is None else notebooks
    if not paths:
        raise FileNotFoundError(f"no notebooks NN_*.ipynb found in {NOTEBOOKS}")
    outdir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in paths:
        copy = student_copy(nbformat.read(path, as_version=4))
        nbformat.validate(copy)
        target = outdir / path.name
        nbformat.write(copy, target)
        written.append(target)
    return written


def main(argv: list[str]) -> int:
    outdir = Path(argv[0]) if argv else ROOT / "student"
    written = make_student(outdir)
    print(f"wrote {len(written)} student notebooks (solutions removed, exercise outputs cleared) to {outdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
