"""`make book` (tools/make_book.py): the static HTML site, built offline from the stored notebooks.

The pages are opened in Chromium by tests/browser/test_book.py; here the site's structure is checked without a
browser: one page per notebook present, the index in course order, the previous/index/next chain, stored outputs
carried over, and nothing loaded from the network."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("make_book", ROOT / "tools" / "make_book.py")
make_book = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_book)

NOTEBOOKS = make_book.notebook_paths()


@pytest.fixture(scope="module")
def book(tmp_path_factory):
    outdir = tmp_path_factory.mktemp("book") / "book"
    make_book.make_book(outdir)
    return outdir


def _hrefs(html: str) -> list[str]:
    return re.findall(r'<a[^>]*\shref="([^"]+)"', html)


def test_one_page_per_notebook_present_and_an_index(book):
    assert NOTEBOOKS
    assert sorted(p.name for p in book.glob("*.html")) == sorted(["index.html"] + [f"{p.stem}.html" for p in NOTEBOOKS])
    assert (book / "mathjax" / "MathJax.js").is_file()
    assert not (book / "mathjax" / "localization").exists(), "unused MathJax parts are left out"


def test_index_lists_the_notebooks_in_course_order(book):
    html = (book / "index.html").read_text(encoding="utf-8")
    assert _hrefs(html) == [f"{p.stem}.html" for p in NOTEBOOKS]
    from lora_edu.course import COURSE_MAP
    for stem, title, _ in COURSE_MAP:
        if (ROOT / "notebooks" / f"{stem}.ipynb").exists():
            assert title in html


def test_every_page_links_previous_index_next(book):
    stems = [p.stem for p in NOTEBOOKS]
    for i, stem in enumerate(stems):
        html = (book / f"{stem}.html").read_text(encoding="utf-8")
        navs = re.findall(r'<nav class="book-nav (?:top|bottom)">(.*?)</nav>', html, re.DOTALL)
        assert len(navs) == 2, f"{stem}: navigation at top and bottom"
        expected = ([f"{stems[i - 1]}.html"] if i > 0 else []) + ["index.html"] + (
            [f"{stems[i + 1]}.html"] if i + 1 < len(stems) else [])
        for nav in navs:
            assert _hrefs(nav) == expected, stem


def test_pages_carry_stored_outputs_and_load_nothing_remote(book):
    for path in NOTEBOOKS:
        html = (book / f"{path.stem}.html").read_text(encoding="utf-8")
        nb = nbformat.read(path, as_version=4)
        pngs = sum("image/png" in out.get("data", {}) for cell in nb.cells if cell.cell_type == "code"
                   for out in cell.outputs)
        assert html.count("data:image/png;base64,") >= pngs, f"{path.name}: stored figures missing"
        first_text = next((out["text"].splitlines()[0] for cell in nb.cells if cell.cell_type == "code"
                           for out in cell.outputs if out.output_type == "stream" and out["text"].strip()), None)
        if first_text:
            import html as html_module
            assert html_module.escape(first_text.strip(), quote=False)[:40] in html, f"{path.name}: stored text"
        remote = re.findall(r'<(?:script|link|img)[^>]*\s(?:src|href)="(https?:[^"]+)"', html)
        assert not remote, f"{path.name} loads {remote[:2]}"
        assert f'src="{make_book.MATHJAX_URL}"' in html


def test_a_subset_of_notebooks_gives_exactly_those_pages(tmp_path):
    subset = NOTEBOOKS[:2]
    written = make_book.make_book(tmp_path / "book", notebooks=subset)
    assert [p.name for p in written] == ["index.html"] + [f"{p.stem}.html" for p in subset]
    assert _hrefs((tmp_path / "book" / "index.html").read_text(encoding="utf-8")) == [f"{p.stem}.html" for p in subset]
    make_book.make_book(tmp_path / "book", notebooks=subset[:1])
    assert sorted(p.name for p in (tmp_path / "book").glob("*.html")) == sorted(["index.html", f"{subset[0].stem}.html"])


def test_no_notebooks_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no notebooks"):
        make_book.make_book(tmp_path / "book", notebooks=[])
