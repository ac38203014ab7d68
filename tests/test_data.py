"""Tests of lora_edu.data: the digits tasks, the text corpora, the vocabulary and the batches."""
import numpy as np
import pytest
import torch

from lora_edu import data


def test_digits_split_is_fixed_and_disjoint():
    train, val = data.digits_split_indices()
    assert len(train) + len(val) == 1797
    assert len(set(train) & set(val)) == 0
    order = np.random.default_rng(data.DIGITS_SPLIT_SEED).permutation(1797)
    assert np.array_equal(val, np.sort(order[:len(val)]))  # the first part of the permutation validates
    again_train, again_val = data.digits_split_indices()
    assert np.array_equal(train, again_train) and np.array_equal(val, again_val)


def test_digits_tasks_share_labels_and_transform_pixels():
    original = data.load_digits_task("original")
    assert original.x_train.shape == (1438, 64) and original.x_val.shape == (359, 64)
    assert float(original.x_train.min()) == 0.0 and float(original.x_train.max()) == 1.0
    images = original.x_val.reshape(-1, 8, 8)
    for task, expected in [("rotated", torch.rot90(images, 1, dims=(1, 2))),
                           ("mirrored", images.flip(2)), ("inverted", 1 - images)]:
        shifted = data.load_digits_task(task)
        assert torch.equal(shifted.y_val, original.y_val)
        assert torch.allclose(shifted.x_val.reshape(-1, 8, 8), expected)
        assert not torch.allclose(shifted.x_val, original.x_val)


def test_transform_digits_rejects_bad_input():
    with pytest.raises(ValueError, match="task='upside_down' is not allowed; allowed values: 'original', 'rotated'"):
        data.transform_digits(np.zeros((2, 8, 8)), "upside_down")
    with pytest.raises(ValueError, match=r"shape \(n, 8, 8\)"):
        data.transform_digits(np.zeros((2, 64)), "rotated")
    with pytest.raises(ValueError, match="allowed values"):
        data.load_digits_task("shuffled")


def test_vocabulary_is_fixed_with_one_unknown_symbol():
    assert data.VOCAB_SIZE == 97 and len(set(data.VOCABULARY)) == 97
    ids = data.encode("def f(x):\n\treturn x’")
    assert ids.dtype == torch.int64
    assert int((ids == data.UNKNOWN_ID).sum()) == 2  # the tab and the curly quote
    assert data.decode(data.encode("print('hi')\n")) == "print('hi')\n"
    with pytest.raises(TypeError, match="text must be a str"):
        data.encode(b"bytes")
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 97\)"):
        data.decode([3, 97])


def test_corpora_are_read_from_this_python_and_report_what_they_read():
    prose, code = data.load_corpus("prose"), data.load_corpus("python")
    assert len(prose.documents) > 50 and prose.characters > 100_000
    assert "json/decoder.py" in code.documents and code.characters > 100_000
    assert code.skipped == []
    for corpus in (prose, code):
        assert len(corpus.train) + len(corpus.val) == corpus.characters
        assert 0.05 < len(corpus.val) / corpus.characters < 0.15
        assert corpus.unknown_fraction < 0.01
        assert corpus.name in corpus.report() and "unknown characters" in corpus.report()
    assert "def " in data.decode(code.train[:5000])
    with pytest.raises(ValueError, match="allowed values: 'prose', 'python'"):
        data.load_corpus("poetry")


def test_missing_modules_are_skipped_not_fatal():
    documents, skipped = data.python_source_documents(("textwrap", "no_such_module_xyz"))
    assert list(documents) == ["textwrap.py"] and skipped == ["no_such_module_xyz"]


def test_random_windows_shift_targets_by_one():
    ids = torch.arange(1000) % data.VOCAB_SIZE
    g = torch.Generator().manual_seed(0)
    x, y = data.random_windows(ids, 4, 16, g)
    assert x.shape == y.shape == (4, 16)
    assert torch.equal(y[:, :-1], x[:, 1:])
    assert torch.equal(x, data.random_windows(ids, 4, 16, torch.Generator().manual_seed(0))[0])
    with pytest.raises(ValueError, match="batch_size must be an int >= 1, got 0"):
        data.random_windows(ids, 0, 16)
    with pytest.raises(ValueError, match="context must be an int >= 1, got -1"):
        data.random_windows(ids, 2, -1)
    with pytest.raises(ValueError, match="too short"):
        data.random_windows(ids[:10], 2, 16)


def test_evaluation_windows_are_deterministic():
    ids = torch.arange(500)
    x, y = data.evaluation_windows(ids, 32, max_windows=8)
    assert x.shape == (8, 32) and torch.equal(y, x + 1)
    assert torch.equal(x, data.evaluation_windows(ids, 32, max_windows=8)[0])
    with pytest.raises(ValueError, match="max_windows"):
        data.evaluation_windows(ids, 32, max_windows=0)
    with pytest.raises(ValueError, match="too short"):
        data.evaluation_windows(ids[:20], 32)


def test_reference_corpus_is_the_modules_help_pages_without_local_paths():
    pages, skipped = data.reference_documents(["heapq", "no_such_module_anywhere"])
    assert skipped == ["no_such_module_anywhere"] and list(pages) == ["heapq"]
    page = pages["heapq"]
    assert "NAME" in page and "heappush" in page
    assert "\nFILE\n" not in page and "MODULE REFERENCE" not in page   # a path on this machine, a URL boilerplate
    corpus = data.load_corpus("reference")
    assert corpus.name == "reference" and len(corpus.documents) >= 20 and corpus.unknown_fraction < 0.01
