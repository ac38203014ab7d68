"""Re-run notebooks top to bottom in a fresh kernel and store their outputs (``make outputs``).

Usage: python tools/store_outputs.py [NOTEBOOK ...]   (default: every notebooks/NN_*.ipynb)

Runs each notebook in the current environment's kernel, in the notebook's own folder, the way nbval
runs it, and writes it back with outputs and execution counts, without timing metadata or widget
state (the widget cells store a PNG fallback instead, see lora_edu.widgets). Prints each run time.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}


def store(path: Path) -> float:
    nb = nbformat.read(path, as_version=4)
    nb.metadata["kernelspec"] = KERNELSPEC
    nb.metadata.pop("widgets", None)
    client = NotebookClient(nb, timeout=900, kernel_name="python3", record_timing=False,
                            store_widget_state=True, resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - start
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
    nb.metadata.pop("widgets", None)
    nbformat.validate(nb)
    nbformat.write(nb, path)
    return seconds


def main(argv: list[str]) -> int:
    paths = [Path(a).resolve() for a in argv] or sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    total = 0.0
    for path in paths:
        seconds = store(path)
        total += seconds
        print(f"{path.name:<45} {seconds:6.1f} s", flush=True)
    print(f"{'total':<45} {total:6.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
