"""The data of the course's experiments, made at run time from what is already installed (no downloads).

Explained in notebook 05_finetuning_strategies_compared.

- **Digits** (scikit-learn's bundled 1,797 images of 8×8 pixels): a fixed train/validation split of
  the original task, and new tasks made by transforming the same images (``rotated``, ``mirrored``,
  ``inverted``): a real domain shift with the same labels, so "forgetting" can be measured on the
  original task after fine-tuning on a new one.
- **Text**: English prose from Python's own documentation topics (``pydoc_data.topics``) to pretrain
  the tiny GPT, and Python source code from a fixed list of standard-library modules (read from the
  user's own Python) as the fine-tuning domain. Characters are encoded with one fixed vocabulary;
  characters outside it map to the unknown symbol ``UNKNOWN_CHAR``.
"""
from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import _validate

# Digits ---------------------------------------------------------------------------------------
DIGITS_TASKS = ("original", "rotated", "mirrored", "inverted")
DIGITS_SPLIT_SEED = 0
DIGITS_VAL_FRACTION = 0.2


@dataclass
class DigitsTask:
    """One digits task: images flattened to 64 pixels scaled to [0, 1], labels 0-9.

    ``x_train``: (n_train, 64) float32, ``y_train``: (n_train,) int64; the same for ``x_val``/``y_val``.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor

    def to(self, device) -> "DigitsTask":
        """The same task with every tensor on ``device``."""
        return DigitsTask(self.name, self.x_train.to(device), self.y_train.to(device),
                          self.x_val.to(device), self.y_val.to(device))


def transform_digits(images: np.ndarray, task: str) -> np.ndarray:
    """Apply a task's transformation to images of shape (n, 8, 8) with values in [0, 1]; same shape out.

    ``original``: unchanged; ``rotated``: turned 90° counter-clockwise; ``mirrored``: flipped left to
    right; ``inverted``: ``1 - x`` (drawn with ``cmap="gray_r"``, dark digits on white become white on dark).
    See notebook 05_finetuning_strategies_compared.
    """
    _validate.choice("task", task, DIGITS_TASKS)
    images = np.asarray(images)
    if images.ndim != 3 or images.shape[1:] != (8, 8):
        raise ValueError(f"images must have shape (n, 8, 8), got {images.shape}")
    if task == "rotated":
        return np.rot90(images, k=1, axes=(1, 2)).copy()
    if task == "mirrored":
        return images[:, :, ::-1].copy()
    if task == "inverted":
        return 1.0 - images
    return images.copy()


def digits_split_indices(n: int = 1797, val_fraction: float = DIGITS_VAL_FRACTION,
                         seed: int = DIGITS_SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """The fixed train/validation split: a seeded permutation of ``range(n)``; its first
    ``round(n · val_fraction)`` indices validate, the rest train. Returns ``(train, val)``, each sorted."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * val_fraction))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def load_digits_task(task: str = "original", device=None) -> DigitsTask:
    """Load one digits task with the course's fixed split (1,438 training and 359 validation images).

    Every task uses the same images and labels in the same split; only the pixels are transformed
    (`transform_digits`). See notebook 05_finetuning_strategies_compared.
    """
    _validate.choice("task", task, DIGITS_TASKS)
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = transform_digits(digits.images / 16.0, task)
    x = torch.tensor(images.reshape(len(images), 64), dtype=torch.float32)
    y = torch.tensor(digits.target, dtype=torch.int64)
    train, val = digits_split_indices(len(x))
    result = DigitsTask(task, x[train], y[train], x[val], y[val])
    return result.to(device) if device is not None else result


# Text: one fixed character vocabulary ---------------------------------------------------------
UNKNOWN_CHAR = "\u00bf"  # '¿' stands for every character outside the vocabulary
VOCABULARY = "\n" + "".join(chr(i) for i in range(32, 127)) + UNKNOWN_CHAR
VOCAB_SIZE = len(VOCABULARY)  # 97: newline, the 95 printable ASCII characters, the unknown symbol
UNKNOWN_ID = VOCABULARY.index(UNKNOWN_CHAR)
_CHAR_TO_ID = {c: i for i, c in enumerate(VOCABULARY)}

# Pure-Python standard-library modules that every CPython >= 3.10 ships as source.
PYTHON_SOURCE_MODULES = (
    "abc", "bisect", "calendar", "colorsys", "contextlib", "copy", "csv", "fnmatch", "fractions",
    "functools", "getopt", "glob", "graphlib", "heapq", "json.decoder", "json.encoder", "keyword",
    "numbers", "operator", "pprint", "queue", "random", "sched", "shlex", "string", "textwrap",
)
VAL_FRACTION = 0.1
CORPORA = ("prose", "python", "reference")


def encode(text: str) -> torch.Tensor:
    """Characters → ids of `VOCABULARY`, shape (len(text),), int64; unknown characters → `UNKNOWN_ID`."""
    _validate.instance("text", text, str, "a str")
    return torch.tensor([_CHAR_TO_ID.get(c, UNKNOWN_ID) for c in text], dtype=torch.int64)


def decode(ids) -> str:
    """Ids of `VOCABULARY` → text. ``ids``: any sequence or 1-D tensor of ints in [0, VOCAB_SIZE)."""
    values = ids.tolist() if hasattr(ids, "tolist") else list(ids)
    bad = [i for i in values if not 0 <= int(i) < VOCAB_SIZE]
    if bad:
        raise ValueError(f"ids must lie in [0, {VOCAB_SIZE}), got {bad[0]}")
    return "".join(VOCABULARY[int(i)] for i in values)


@dataclass
class TextCorpus:
    """An encoded corpus with its train/validation split and a report of what was read.

    ``train``, ``val``: 1-D int64 tensors of character ids. ``documents``: the names read
    (topics or module files); ``characters``: how many characters; ``unknown_fraction``: the share of
    characters mapped to the unknown symbol.
    """

    name: str
    train: torch.Tensor
    val: torch.Tensor
    documents: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    characters: int = 0
    unknown_fraction: float = 0.0

    def report(self) -> str:
        """One line: what was read, how many characters, how many unknown."""
        skipped = f", skipped {len(self.skipped)} ({', '.join(self.skipped)})" if self.skipped else ""
        return (f"{self.name}: {len(self.documents)} documents, {self.characters:,} characters "
                f"({len(self.train):,} train / {len(self.val):,} val), "
                f"unknown characters {self.unknown_fraction:.3%}{skipped}")


def _split_documents(name: str, documents: dict[str, str], skipped: list[str]) -> TextCorpus:
    """Encode each document; its first 90 % goes to training and its last 10 % to validation."""
    train_parts, val_parts, unknown, total = [], [], 0, 0
    for text in documents.values():
        ids = encode(text + "\n\n")
        cut = int(len(ids) * (1 - VAL_FRACTION))
        train_parts.append(ids[:cut])
        val_parts.append(ids[cut:])
        unknown += int((ids == UNKNOWN_ID).sum())
        total += len(ids)
    return TextCorpus(name, torch.cat(train_parts), torch.cat(val_parts), list(documents), skipped,
                      total, unknown / max(total, 1))


def python_source_documents(modules=PYTHON_SOURCE_MODULES) -> tuple[dict[str, str], list[str]]:
    """Read each module's source file from this Python's standard library.

    Returns ``({"json/decoder.py": source, ...}, skipped)``; a module without a readable ``.py`` file
    (some embedded Pythons ship only bytecode) is listed in ``skipped`` instead of failing.
    """
    documents, skipped = {}, []
    for module_name in modules:
        try:
            text = Path(importlib.import_module(module_name).__file__).read_text(encoding="utf-8")
        except (ImportError, AttributeError, TypeError, OSError, UnicodeDecodeError):
            skipped.append(module_name)
            continue
        documents[module_name.replace(".", "/") + ".py"] = text
    return documents, skipped


def prose_documents() -> dict[str, str]:
    """Python's documentation topics (``pydoc_data.topics``, what ``help('topic')`` shows), sorted by name."""
    try:
        from pydoc_data.topics import topics
    except ImportError as error:  # a few stripped-down Pythons leave the docs out
        raise RuntimeError("this Python has no pydoc_data.topics (its documentation topics), "
                           "which the prose corpus is read from") from error
    return {name: topics[name] for name in sorted(topics)}


def reference_documents(modules=PYTHON_SOURCE_MODULES) -> tuple[dict[str, str], list[str]]:
    """Each module's reference page as ``help(module)`` prints it (``pydoc``'s plain-text renderer): names,
    signatures and docstrings. The FILE section (a path on this machine) and the MODULE REFERENCE boilerplate
    are left out. Returns ``({"json.decoder": page, ...}, skipped)``. See notebook 07_many_tasks_one_model."""
    import pydoc

    documents, skipped = {}, []
    for module_name in modules:
        try:
            page = pydoc.render_doc(importlib.import_module(module_name), renderer=pydoc.plaintext)
        except ImportError:
            skipped.append(module_name)
            continue
        sections = re.split(r"\n(?=[A-Z][A-Z ]+\n)", page)  # pydoc's headings stand alone in capitals
        documents[module_name] = "\n".join(s for s in sections if not s.startswith(("FILE\n", "MODULE REFERENCE")))
    return documents, skipped


_CORPUS_CACHE: dict[str, TextCorpus] = {}


def load_corpus(name: str) -> TextCorpus:
    """Read, encode and split one corpus: ``"prose"`` (documentation topics), ``"python"`` (stdlib source) or
    ``"reference"`` (the same modules' ``help()`` pages, notebook 07).

    Read once per process and cached. Call ``.report()`` to see what was read.
    See notebook 05_finetuning_strategies_compared.
    """
    _validate.choice("name", name, CORPORA)
    if name not in _CORPUS_CACHE:
        documents, skipped = {"prose": lambda: (prose_documents(), []), "python": python_source_documents,
                              "reference": reference_documents}[name]()
        if not documents:  # only the python corpus can come out empty: every module file missing
            raise RuntimeError(f"none of the standard-library modules {PYTHON_SOURCE_MODULES} has a "
                               "readable .py file in this Python")
        _CORPUS_CACHE[name] = _split_documents(name, documents, skipped)
    return _CORPUS_CACHE[name]


def _windows_at(ids: torch.Tensor, starts: torch.Tensor, context: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs ``ids[s : s+context]`` and next-character targets ``ids[s+1 : s+context+1]`` for each start s."""
    windows = ids[starts[:, None] + torch.arange(context + 1)[None, :]]
    if device is not None:
        windows = windows.to(device)
    return windows[:, :-1], windows[:, 1:]


def random_windows(ids: torch.Tensor, batch_size: int, context: int,
                   generator: torch.Generator | None = None, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of random windows for next-character prediction.

    Returns ``x`` and ``y``, both (batch_size, context) int64, with ``y[:, t] = x[:, t+1]`` in the text:
    the model reads ``x`` and predicts ``y``. Start positions are drawn with ``generator`` from
    ``0 .. len(ids) - context - 2``: the last valid start, ``len(ids) - context - 1``, is never drawn.
    That off-by-one is kept on purpose: the shipped GPT checkpoint was pretrained with these draws, and
    fixing it would change what ``python -m lora_edu.pretrain`` reproduces.
    """
    _validate.integer("batch_size", batch_size, 1)
    _validate.integer("context", context, 1)
    if len(ids) <= context + 1:
        raise ValueError(f"the text ({len(ids)} ids) is too short for context={context}")
    starts = torch.randint(0, len(ids) - context - 1, (batch_size,), generator=generator)
    return _windows_at(ids, starts, context, device)


def evaluation_windows(ids: torch.Tensor, context: int, max_windows: int = 64,
                       device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed, evenly spaced windows for a deterministic validation loss.

    Returns ``x``, ``y`` of shape (n, context) with n = min(max_windows, windows that fit).
    """
    _validate.integer("context", context, 1)
    _validate.integer("max_windows", max_windows, 1)
    fits = (len(ids) - 1) // context
    if fits < 1:
        raise ValueError(f"the text ({len(ids)} ids) is too short for context={context}")
    n = min(max_windows, fits)
    starts = torch.linspace(0, len(ids) - context - 1, n).long()
    return _windows_at(ids, starts, context, device)
